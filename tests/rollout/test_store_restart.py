"""The policy's restart zeroes every arm's discounted sums and nothing else, on both stores."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from rollout.store import FeedbackRow, Store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    if request.param == "postgresql":
        url = str(request.getfixturevalue("postgres_url"))
    made = Store(url)
    made.create_schema()
    return made


def _feedback(store: Store, arm: str, n: int, tag: str) -> None:
    rows = [FeedbackRow(f"{tag}-{arm}-{i}", float(i % 4 == 0), arm, 1.0) for i in range(n)]
    store.apply_batch([], rows, discount=0.999)


def test_the_restart_zeroes_the_policys_sums_and_keeps_the_plain_ones(store: Store) -> None:
    _feedback(store, "v1", 400, "a")
    _feedback(store, "v2", 100, "a")
    before = store.read_stats()
    assert before["v1"].pulls > 0 and before["v2"].reward_sum > 0
    assert store.restart_policy_sums() == 2
    after = store.read_stats()
    for arm, was in before.items():
        now = after[arm]
        assert (now.pulls, now.reward_sum, now.reward_sq_sum) == (0.0, 0.0, 0.0)
        kept = {f.name for f in dataclasses.fields(was)} - {"pulls", "reward_sum", "reward_sq_sum"}
        assert {k: getattr(now, k) for k in kept} == {k: getattr(was, k) for k in kept}
    # Rewards after the restart count from zero, discounted as before.
    _feedback(store, "v2", 10, "b")
    again = store.read_stats()["v2"]
    assert again.outcomes == 110 and 0 < again.pulls <= 10


def test_a_restart_beside_the_writers_batches_loses_no_outcome(store: Store) -> None:
    errors: list[BaseException] = []

    def write(tag: str) -> None:
        try:
            for k in range(20):
                _feedback(store, "v1", 25, f"{tag}{k}")
                _feedback(store, "v2", 25, f"{tag}{k}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in ("x", "y")]
    for t in threads:
        t.start()
    for _ in range(10):
        store.restart_policy_sums()
    for t in threads:
        t.join()
    assert not errors, errors
    stats = store.read_stats()
    assert stats["v1"].outcomes == stats["v2"].outcomes == 2 * 20 * 25
    assert stats["v1"].pulls <= 1_000 and stats["v2"].pulls <= 1_000
