"""The decision rows the group commit writes through the driver: the same rows as Core's."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from rollout import upserts
from rollout.store import DecisionRow, Store
from rollout.store_schema import decisions

ROWS = [
    DecisionRow("a", "v1", 1_700_000_000.123456789, None, 0.5, '{"name": "thompson"}', "n"),
    DecisionRow("b", "v2", 1_700_000_001.5, "unit-7", None, None, None),
    DecisionRow("c", "v10", math.pi, "ünït ' \" ; --", 1e-300, "", "region=south"),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("postgres_url"))


def _core_insert(store: Store, rows: list[DecisionRow], prefix: str) -> None:
    """What the store ran before: the Core construct with one dictionary per row."""
    params = [
        {
            "request_id": prefix + d.request_id,
            "arm": d.arm,
            "unit_id": d.unit_id,
            "created_at": d.created_at,
            "settled": False,
            "propensity": d.propensity,
            "policy": d.policy,
            "segment": d.segment,
        }
        for d in rows
    ]
    with store.engine.begin() as conn:
        conn.execute(upserts.insert_ignoring(store.dialect, decisions), params)


def _stored(store: Store, prefix: str) -> dict[str, tuple[Any, ...]]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(decisions).where(decisions.c.request_id.like(prefix + "%")))
        return {r.request_id[len(prefix) :]: tuple(r)[1:] for r in rows}


def test_the_driver_insert_stores_what_the_core_insert_stored(url: str) -> None:
    store = Store(url)
    store.create_schema()
    _core_insert(store, ROWS, "core-")
    store.apply_batch([dataclasses.replace(d, request_id="drv-" + d.request_id) for d in ROWS])
    core, driver = _stored(store, "core-"), _stored(store, "drv-")
    assert driver == core and set(driver) == {"a", "b", "c"}
    for key, got in driver.items():  # the same Python types back, exactly the same floats
        assert [type(v) for v in got] == [type(v) for v in core[key]]
    assert driver["a"][2] == 1_700_000_000.123456789 and driver["a"][3] is False
    assert driver["c"][1] == "ünït ' \" ; --" and driver["c"][4] == 1e-300
    assert store.read_stats()["v1"].served == 1 and store.read_stats()["v10"].served == 1
    if store.is_sqlite:  # dynamic typing: the same storage classes as the Core insert's
        with store.engine.connect() as conn:
            kinds = select(decisions.c.request_id, func.typeof(decisions.c.settled))
            by_id = dict(conn.execute(kinds).tuples().all())
        assert by_id["drv-a"] == by_id["core-a"] == "integer"
    store.dispose()


def test_a_repeated_request_id_keeps_the_first_row_as_before(url: str) -> None:
    store = Store(url)
    store.create_schema()
    store.apply_batch([DecisionRow("r", "v1", 1.0, None, 0.5)])
    store.apply_batch([DecisionRow("r", "v2", 2.0, None, 0.25), DecisionRow("s", "v2", 3.0)])
    rows = _stored(store, "")
    assert rows["r"][:2] == ("v1", None) and rows["r"][2] == 1.0 and rows["s"][0] == "v2"
    store.dispose()


def test_a_failing_decision_write_raises_sqlalchemy_s_error(tmp_path: Path) -> None:
    """The writer's retries and the 503 mapping see the same wrapped error as before."""
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    store.create_schema()
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE rollout_decisions")
    with pytest.raises(OperationalError, match="no such table: rollout_decisions"):
        store.apply_batch([DecisionRow("r", "v1", 1.0)])
    store.dispose()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_driver_sql_lists_the_columns_in_the_given_order(dialect: str) -> None:
    columns = tuple(decisions.c.keys())
    sql = upserts.driver_insert_ignoring(dialect, decisions, columns)
    assert sql.startswith(f"INSERT INTO rollout_decisions ({', '.join(columns)}) VALUES (")
    assert sql.endswith("ON CONFLICT DO NOTHING")
    assert sql.count("?" if dialect == "sqlite" else "%s") == len(columns)
    with pytest.raises(AssertionError, match="compiled parameters"):
        upserts.driver_insert_ignoring(dialect, decisions, columns[::-1])
