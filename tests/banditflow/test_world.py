"""The application's outcome log: the offers it made, known once their delay has passed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from banditflow.world import append_outcomes, served_outcomes

AT = pd.Timestamp("2026-04-11", tz="UTC")


def _served() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [1, 2, 3, 4],
            "at": [AT + pd.Timedelta(hours=h) for h in (1, 2, 3, 23)],
            "delay_s": [600.0, 7_200.0, 60.0, 7_200.0],
            "offered": [True, False, True, True],
            "converted": [True, True, False, False],
        }
    )


def test_only_offers_have_outcomes_known_after_their_delay() -> None:
    rows = served_outcomes(_served())
    # Customer 2 got no offer: whether it would have converted is not the application's to know.
    assert rows["customer_id"].tolist() == [1, 3, 4]
    assert rows["converted"].tolist() == [1, 0, 0]
    assert rows["event_timestamp"].tolist() == [AT + pd.Timedelta(hours=h) for h in (1, 3, 23)]
    assert rows["known_at"].iloc[0] == AT + pd.Timedelta(hours=1, minutes=10)
    assert rows["known_at"].iloc[2] == AT + pd.Timedelta(days=1, hours=1)  # the next day's


def test_the_log_is_created_then_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.parquet"
    rows = served_outcomes(_served())
    assert append_outcomes(rows.iloc[:0], path) == 0 and path.exists()
    assert append_outcomes(rows.iloc[:2], path) == 2
    assert append_outcomes(rows.iloc[2:], path) == 1
    log = pd.read_parquet(path)
    assert list(log.columns) == ["customer_id", "event_timestamp", "converted"]
    assert log["customer_id"].tolist() == [1, 3, 4]
