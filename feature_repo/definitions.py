"""Feast definitions of banditflow: the customer entity, its sources, views and service.

Plain data only (``feast apply`` imports this module). File paths come from
``$BANDITFLOW_HOME`` (default: ``<repo>/.banditflow``), like tasks/settings.py.
"""

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource
from feast.types import Float64, Int64, String
from feast.value_type import ValueType

HOME = Path(
    os.environ.get("BANDITFLOW_HOME") or Path(__file__).resolve().parent.parent / ".banditflow"
).resolve()
DATA = HOME / "data"

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.INT64,
    description="A shop customer (tasks/datagen.py ids start at 100001).",
)

customers_source = FileSource(
    name="customers_source",
    path=str(DATA / "customers.parquet"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
)

activity_source = FileSource(
    name="activity_source",
    path=str(DATA / "activity.parquet"),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
)

# Pushes reach the online store (and, if asked, the activity file) between materializations.
activity_push = PushSource(name="activity_push", batch_source=activity_source)

customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    # Profiles are snapshotted rarely; a year-old snapshot is still the customer.
    ttl=timedelta(days=365),
    schema=[
        Field(name="age_band", dtype=String, description="Sensitive attribute (fairness)."),
        Field(name="region", dtype=String),
        Field(name="signup_channel", dtype=String),
        Field(name="tenure_days", dtype=Int64),
        Field(name="is_premium", dtype=Int64),
    ],
    source=customers_source,
    online=True,
)

customer_activity = FeatureView(
    name="customer_activity",
    entities=[customer],
    # Daily 7-day aggregates: older than two days means a snapshot went missing.
    ttl=timedelta(days=2),
    schema=[
        Field(name="sessions_7d", dtype=Int64),
        Field(name="pageviews_7d", dtype=Int64),
        Field(name="cart_adds_7d", dtype=Int64),
        Field(name="minutes_7d", dtype=Float64, description="NaN where tracking missed it."),
        Field(name="days_since_last_purchase", dtype=Float64, description="NaN: never bought."),
        Field(name="discount_rate_7d", dtype=Float64),
    ],
    source=activity_push,
    online=True,
)

conversion_model_v1 = FeatureService(
    name="conversion_model_v1",
    features=[customer_profile, customer_activity],
    description="Everything the conversion model reads.",
)
