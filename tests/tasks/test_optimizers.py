"""Contract tests for every optimizer backend (testing a new backend is one line in BACKENDS)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasks.optimizers import (
    CapabilityError,
    MultiObjectiveError,
    Optimizer,
    PointError,
    SpaceError,
    TrialAlreadyToldError,
    UnknownTrialError,
    get_optimizer,
    load_optimizer,
)
from tasks.optimizers.base import dominates
from tasks.spec import ParamSpec

# Options that keep each backend cheap in tests; the contract holds with the defaults too.
BACKENDS: dict[str, dict[str, Any]] = {
    "random": {},
    "hyperopt": {"n_startup_jobs": 4},
    "ax": {},  # 8 Sobol points first: the contract tests stay in that cheap phase
}
MULTI_OBJECTIVE = {"random", "ax"}

SPACE: dict[str, Any] = {
    "lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
    "depth": {"type": "int", "low": 1, "high": 12},
    "leaves": {"type": "int", "low": 2, "high": 256, "log": True},
    "act": {"type": "categorical", "choices": ["relu", "tanh"]},
    "weight": {"type": "categorical", "choices": [None, "balanced"]},
    "penalty": {"type": "categorical", "choices": ["l2", "elasticnet"]},
    "l1_ratio": {
        "type": "float",
        "low": 0.0,
        "high": 1.0,
        "condition": {"penalty": ["elasticnet"]},
    },
}


def check_point(params: dict[str, Any]) -> None:
    """Assert ``params`` is a valid point of SPACE: types, bounds, choices, conditions."""
    active = set(SPACE) - ({"l1_ratio"} if params["penalty"] != "elasticnet" else set())
    assert set(params) == active, params
    assert isinstance(params["lr"], float) and 1e-4 <= params["lr"] <= 0.1
    assert type(params["depth"]) is int and 1 <= params["depth"] <= 12
    assert type(params["leaves"]) is int and 2 <= params["leaves"] <= 256
    assert params["act"] in ("relu", "tanh")
    assert params["weight"] in (None, "balanced")
    if "l1_ratio" in params:
        assert isinstance(params["l1_ratio"], float) and 0 <= params["l1_ratio"] <= 1


def loss(params: dict[str, Any]) -> float:
    return (math.log10(params["lr"]) + 2) ** 2 + abs(params["depth"] - 4) / 4


def make(backend: str, objectives: dict[str, str] | None = None, seed: int = 0) -> Optimizer:
    return get_optimizer(
        backend, SPACE, objectives or {"loss": "minimize"}, seed=seed, **BACKENDS[backend]
    )


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestOptimizerContract:
    """What the optimize flow relies on, for every backend."""

    def test_ask_returns_distinct_points_inside_the_space(self, backend: str) -> None:
        optimizer = make(backend)
        trials = optimizer.ask(6)
        assert len(trials) == 6
        assert len({t.id for t in trials}) == 6
        assert len({repr(sorted(t.params.items())) for t in trials}) == 6
        for trial in trials:
            check_point(trial.params)
        assert {t.id for t in optimizer.pending()} == {t.id for t in trials}

    def test_failures_nan_and_pruned_are_recorded_and_the_study_goes_on(self, backend: str) -> None:
        optimizer = make(backend)
        a, b, c, d, e = optimizer.ask(5)
        optimizer.tell(a.id, {"loss": float("nan")})
        optimizer.tell(b.id, {"other": 1.0})  # the objective is missing
        optimizer.tell(c.id, None, status="failed", reason="ValueError: solver diverged")
        optimizer.tell(d.id, {"loss": 3.0}, status="pruned", reason="below the median")
        optimizer.tell(e.id, {"loss": 2.0})
        by_id = {r.id: r for r in optimizer.trials()}
        assert by_id[a.id].status == "failed" and "nan" in (by_id[a.id].reason or "")
        assert by_id[b.id].status == "failed" and "missing" in (by_id[b.id].reason or "")
        assert (
            by_id[c.id].status == "failed" and by_id[c.id].reason == "ValueError: solver diverged"
        )
        assert by_id[d.id].status == "pruned" and by_id[d.id].values == {"loss": 3.0}
        assert by_id[e.id].status == "completed"
        best = optimizer.best()
        assert best is not None and best.id == e.id  # pruned and failed never count as best
        more = optimizer.ask(2)
        assert len(more) == 2 and not {t.id for t in more} & set(by_id)
        for trial in more:
            check_point(trial.params)

    def test_tell_unknown_or_twice_raises(self, backend: str) -> None:
        optimizer = make(backend)
        (trial,) = optimizer.ask(1)
        with pytest.raises(UnknownTrialError, match="unknown trial id '99'"):
            optimizer.tell("99", {"loss": 1.0})
        optimizer.tell(trial.id, {"loss": 1.0})
        with pytest.raises(TrialAlreadyToldError, match="already told"):
            optimizer.tell(trial.id, {"loss": 0.5})
        with pytest.raises(ValueError, match="status must be one of"):
            optimizer.tell(optimizer.ask(1)[0].id, {"loss": 1.0}, status="done")

    def test_save_and_load_resume_the_study(self, backend: str, tmp_path: Path) -> None:
        optimizer = make(backend, seed=3)
        trials = optimizer.ask(6)
        for trial in trials[:4]:
            optimizer.tell(trial.id, {"loss": loss(trial.params)})
        optimizer.enqueue({"lr": 0.01, "depth": 4, "leaves": 8, "act": "relu", "weight": None,
                           "penalty": "l2"})  # fmt: skip
        path = tmp_path / "state" / "optimizer.json"
        optimizer.save(path)
        assert not list(path.parent.glob(".*"))  # the temp file was renamed, not left over
        resumed = load_optimizer(path)
        assert type(resumed) is type(optimizer)
        assert resumed.trials() == optimizer.trials()
        assert [t.id for t in resumed.pending()] == [trials[4].id, trials[5].id]
        assert resumed.best() == optimizer.best()
        # The pending trials can still be told, and asking continues with new ids.
        resumed.tell(trials[4].id, {"loss": 1.0})
        optimizer.tell(trials[4].id, {"loss": 1.0})
        next_resumed, next_original = resumed.ask(3), optimizer.ask(3)
        # Ax hands out only the Sobol points its initial budget (8) has left: 1 of the 2.
        expected = ["6", "7"] if backend == "ax" else ["6", "7", "8"]
        assert [t.id for t in next_resumed] == expected
        assert next_resumed[0].params == {"lr": 0.01, "depth": 4, "leaves": 8, "act": "relu",
                                          "weight": None, "penalty": "l2"}  # fmt: skip
        if resumed.deterministic_resume:
            assert next_resumed == next_original
        for trial in next_resumed:
            check_point(trial.params)

    def test_enqueued_points_are_served_first(self, backend: str) -> None:
        optimizer = make(backend)
        first = {"lr": 0.001, "depth": 3.0, "leaves": 16, "act": "tanh", "weight": "balanced",
                 "penalty": "elasticnet", "l1_ratio": 0.5}  # fmt: skip
        second = {
            "lr": 0.05,
            "depth": 7,
            "leaves": 2,
            "act": "relu",
            "weight": None,
            "penalty": "l2",
            "l1_ratio": 0.9,
        }  # fmt: skip  (inactive: dropped)
        optimizer.enqueue(first)
        optimizer.enqueue(second)
        a, b, c = optimizer.ask(3)
        assert a.params == {**first, "depth": 3} and type(a.params["depth"]) is int
        assert b.params == {k: v for k, v in second.items() if k != "l1_ratio"}
        check_point(c.params)
        for trial in (a, b, c):
            optimizer.tell(trial.id, {"loss": loss(trial.params)})
        assert optimizer.best() is not None

    def test_enqueue_rejects_points_outside_the_space(self, backend: str) -> None:
        optimizer = make(backend)
        point = {"lr": 0.5, "depth": 3, "leaves": 16, "act": "relu", "weight": None,
                 "penalty": "l2"}  # fmt: skip
        with pytest.raises(PointError, match=r"lr=0.5 is outside"):
            optimizer.enqueue(point)
        with pytest.raises(PointError, match="'swish' is not one of"):
            optimizer.enqueue({**point, "lr": 0.01, "act": "swish"})
        with pytest.raises(PointError, match="missing"):
            optimizer.enqueue({"lr": 0.01})

    def test_best_and_pareto_respect_directions(self, backend: str) -> None:
        if backend not in MULTI_OBJECTIVE:
            with pytest.raises(CapabilityError, match="single objective"):
                make(backend, {"auc": "maximize", "latency_ms": "minimize"})
            return
        optimizer = make(backend, {"auc": "maximize", "latency_ms": "minimize"})
        values = [(0.9, 5.0), (0.8, 1.0), (0.85, 6.0), (0.7, 0.5), (0.9, 4.0)]
        trials = optimizer.ask(len(values))
        for trial, (auc, latency) in zip(trials, values, strict=True):
            optimizer.tell(trial.id, {"auc": auc, "latency_ms": latency})
        front = {r.id for r in optimizer.pareto()}
        assert front == {trials[1].id, trials[3].id, trials[4].id}
        with pytest.raises(MultiObjectiveError, match="pareto"):
            optimizer.best()


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({}, "empty"),
        ({"lr": {"type": "double", "low": 0, "high": 1}}, "parameter 'lr': type must be one of"),
        ({"lr": {"type": "float", "low": 1, "high": 1}}, "parameter 'lr': 'low' must be below"),
        ({"n": {"type": "int", "low": 5}}, "parameter 'n': a int parameter needs 'low' and 'high'"),
        ({"lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "'lr': a log-scale"),
        ({"act": {"type": "categorical", "choices": []}}, "'act': a categorical needs"),
        (
            {"x": {"type": "float", "low": 0, "high": 1, "condition": {"nope": ["a"]}}},
            "'x': its condition names 'nope'",
        ),
    ],
)
def test_bad_space_raises_naming_the_parameter(space: dict[str, Any], message: str) -> None:
    for name in BACKENDS if space == {} else ["random", "hyperopt"]:
        with pytest.raises(SpaceError, match=message):
            get_optimizer(name, space, {"loss": "minimize"})


def test_param_spec_objects_and_unknown_backend() -> None:
    space = {
        "C": ParamSpec(type="float", low=1e-3, high=10, log=True),
        "penalty": ParamSpec(type="categorical", choices=["l1", "l2"]),
    }
    trials = get_optimizer("hyperopt", space, {"auc": "maximize"}).ask(3)
    assert all(set(t.params) == {"C", "penalty"} for t in trials)
    with pytest.raises(ValueError, match="unknown optimizer 'smac'"):
        get_optimizer("smac", space, {"auc": "maximize"})
    with pytest.raises(ValueError, match="direction must be"):
        get_optimizer("random", space, {"auc": "up"})


class CycleOptimizer(Optimizer):
    """A backend defined in test code: walks the first categorical's choices in turn."""

    name = "cycle"
    deterministic_resume = True

    def _suggest(self, n: int) -> list[dict[str, Any]]:
        rng = np.random.default_rng(self.seed + self._next_id)
        return [self.space.sample(rng) for _ in range(n)]

    def _register(self, trial: Any) -> None:
        """Nothing to remember."""

    def _observe(self, result: Any) -> None:
        """Nothing to learn."""


def test_a_backend_registered_from_test_code_runs_a_spec_and_resumes(tmp_path: Path) -> None:
    from tasks.optimizers import available_optimizers, register_optimizer, unregister_optimizer
    from tasks.spec import SpecError, StudySpec

    raw = {"name": "reg", "optimizer": "cycle", "objectives": {"roc_auc": "maximize"}}
    with pytest.raises(SpecError, match=r"unknown optimizer 'cycle'; choose from \['ax'"):
        StudySpec.parse(raw)
    register_optimizer("cycle", CycleOptimizer)
    try:
        assert "cycle" in available_optimizers()
        assert StudySpec.parse(raw).optimizer == "cycle"
        two = {**raw, "objectives": {"roc_auc": "maximize", "latency_ms": "minimize"}}
        assert StudySpec.parse(two).optimizer == "cycle"  # multi_objective from the class
        optimizer = get_optimizer("cycle", SPACE, {"loss": "minimize"}, seed=3)
        (trial,) = optimizer.ask(1)
        check_point(trial.params)
        optimizer.tell(trial.id, {"loss": loss(trial.params)})
        optimizer.save(tmp_path / "state.json")
        loaded = load_optimizer(tmp_path / "state.json")
        assert isinstance(loaded, CycleOptimizer) and loaded.trials() == optimizer.trials()
        with pytest.raises(ValueError, match="already registered"):
            register_optimizer("cycle", CycleOptimizer)
    finally:
        unregister_optimizer("cycle")
    with pytest.raises(SpecError, match="hyperopt optimizes a single objective"):
        StudySpec.parse({**raw, "optimizer": "hyperopt", "objectives": two["objectives"]})


PLUGIN_MODULE = """
import numpy as np
from tasks.optimizers import Optimizer

class PluginOptimizer(Optimizer):
    name = "plugin-cycle"

    def _suggest(self, n):
        rng = np.random.default_rng(self.seed + self._next_id)
        return [self.space.sample(rng) for _ in range(n)]

    def _register(self, trial):
        pass

    def _observe(self, result):
        pass
"""


def test_a_backend_found_through_the_entry_point_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A distribution's entry_points.txt on sys.path is all a third-party backend needs."""
    from contract import OPTIMIZER_ENTRY_POINT_GROUP
    from tasks.optimizers import available_optimizers
    from tasks.spec import StudySpec

    (tmp_path / "bf_cycle_plugin.py").write_text(PLUGIN_MODULE)
    info = tmp_path / "bf_cycle_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bf-cycle-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{OPTIMIZER_ENTRY_POINT_GROUP}]\nplugin-cycle = bf_cycle_plugin:PluginOptimizer\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "plugin-cycle" in available_optimizers()
    spec = StudySpec.parse({"name": "ep", "optimizer": "plugin-cycle"})
    optimizer = get_optimizer(spec.optimizer, SPACE, {"loss": "minimize"})
    assert type(optimizer).__module__ == "bf_cycle_plugin"
    assert len(optimizer.ask(2)) == 2


def test_importing_the_package_loads_neither_ax_nor_hyperopt() -> None:
    code = "import sys, tasks.optimizers; print('ax' in sys.modules, 'hyperopt' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd()
    )
    assert out.stdout.split() == ["False", "False"]


def test_hyperopt_batch_is_distinct_after_the_startup_phase() -> None:
    """tpe.suggest asked for 4 ids at once returns 4 copies; the adapter must not."""
    optimizer = make("hyperopt")
    for trial in optimizer.ask(4):  # the 4 random start-up points
        optimizer.tell(trial.id, {"loss": loss(trial.params)})
    for _ in range(3):  # TPE rounds
        batch = optimizer.ask(4)
        assert len({repr(sorted(t.params.items())) for t in batch}) == 4
        for trial in batch:
            optimizer.tell(trial.id, {"loss": loss(trial.params)})


def test_hyperopt_nests_conditional_parameters() -> None:
    optimizer = make("hyperopt", seed=1)
    trials = optimizer.ask(30)
    with_ratio = [t for t in trials if "l1_ratio" in t.params]
    assert with_ratio and len(with_ratio) < len(trials)
    assert all(t.params["penalty"] == "elasticnet" for t in with_ratio)


# -- quality: each backend beats random at equal budget ----------------------------------
_A = np.array(
    [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8],
     [17, 8, 0.05, 10, 0.1, 14]]
)  # fmt: skip
_P = 1e-4 * np.array(
    [[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
     [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]]
)  # fmt: skip
_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
HARTMANN6_SPACE = {f"x{i}": {"type": "float", "low": 0.0, "high": 1.0} for i in range(6)}
BRANIN_SPACE = {
    "x1": {"type": "float", "low": -5.0, "high": 10.0},
    "x2": {"type": "float", "low": 0.0, "high": 15.0},
}


def hartmann6(params: dict[str, Any]) -> float:
    """Return Hartmann6 (minimum -3.32237)."""
    x = np.array([params[f"x{i}"] for i in range(6)])
    return float(-np.sum(_ALPHA * np.exp(-np.sum(_A * (x - _P) ** 2, axis=1))))


def branin(params: dict[str, Any]) -> float:
    """Return Branin (minimum 0.397887)."""
    x1, x2 = params["x1"], params["x2"]
    b, c = 5.1 / (4 * math.pi**2), 5 / math.pi
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10


def best_after(backend: str, space: dict[str, Any], fn: Any, seed: int, budget: int, q: int,
               **options: Any) -> float:  # fmt: skip
    optimizer = get_optimizer(backend, space, {"y": "minimize"}, seed=seed, **options)
    told = 0
    while told < budget:
        batch = optimizer.ask(min(q, budget - told))
        assert batch, "a backend returned no trial with nothing pending"
        for trial in batch:
            optimizer.tell(trial.id, {"y": fn(trial.params)})
            told += 1
    best = optimizer.best()
    assert best is not None
    return best.values["y"]


@pytest.mark.slow
def test_hyperopt_beats_random_on_hartmann6() -> None:
    """Mean best of 20 seeds after 40 trials (hyperopt's TPE costs ~0.3 s a study).

    Measured with fmin's seed stream: hyperopt -1.97, random -1.62 (per-seed sd 0.38 and
    0.59, so the difference has a standard error of about 0.16). The margin 0.15 is about
    half the measured gap.
    """
    seeds = range(20)
    tpe = np.mean([best_after("hyperopt", HARTMANN6_SPACE, hartmann6, s, 40, 1) for s in seeds])
    rnd = np.mean([best_after("random", HARTMANN6_SPACE, hartmann6, s, 40, 1) for s in seeds])
    assert tpe < rnd - 0.15, (tpe, rnd)


@pytest.mark.slow
def test_ax_beats_random_on_branin() -> None:
    """Mean best of 3 seeds after 16 trials (5 Sobol, then 11 model-based, one at a time).

    Measured (seeds 0-2): Ax 0.46, 0.58, 1.97 (mean 1.00; the optimum is 0.398); random
    search 10.9, 1.92, 0.84 (mean 4.54). Asserted: Ax's mean is below random's by 1.0 and
    within 1.2 of the optimum, margins several times the spread seen across machines.
    """
    seeds = range(3)
    ax = [best_after("ax", BRANIN_SPACE, branin, s, 16, 1, initialization_budget=5) for s in seeds]
    rnd = [best_after("random", BRANIN_SPACE, branin, s, 16, 1) for s in seeds]
    assert np.mean(ax) < np.mean(rnd) - 1.0, (ax, rnd)
    assert np.mean(ax) < 0.398 + 1.2, ax


def quadratic_pair(params: dict[str, Any]) -> dict[str, float]:
    """Two objectives whose Pareto front is y=0, x in [0, 2]: f2 = (2 - sqrt(f1))^2."""
    x, y = params["x"], params["y"]
    return {"f1": x**2 + y**2, "f2": (x - 2) ** 2 + y**2}


def distance_to_front(f1: float, f2: float) -> float:
    t = np.linspace(0.0, 2.0, 2001)
    return float(np.min(np.hypot(f1 - t**2, f2 - (2 - t) ** 2)))


@pytest.mark.slow
@pytest.mark.parametrize("backend", sorted(MULTI_OBJECTIVE))
def test_pareto_is_non_dominated_and_approaches_the_true_front(backend: str) -> None:
    space = {
        "x": {"type": "float", "low": -1.0, "high": 3.0},
        "y": {"type": "float", "low": -2.0, "high": 2.0},
    }
    options = {"initialization_budget": 6} if backend == "ax" else {}
    objectives = {"f1": "minimize", "f2": "minimize"}
    optimizer = get_optimizer(backend, space, objectives, seed=0, **options)
    for batch in (6, 4, 4):  # 6 initial points, then two model-based batches of 4
        for trial in optimizer.ask(batch):
            optimizer.tell(trial.id, quadratic_pair(trial.params))
    front = optimizer.pareto()
    everything = [r for r in optimizer.trials() if r.status == "completed"]
    vec = {r.id: [r.values["f1"], r.values["f2"]] for r in everything}
    for member in front:
        assert not any(dominates(vec[o.id], vec[member.id]) for o in everything)
    for other in everything:  # every completed trial off the front is dominated by one on it
        if other.id not in {m.id for m in front}:
            assert any(dominates(vec[m.id], vec[other.id]) for m in front)
    gd = np.mean([distance_to_front(*vec[m.id]) for m in front])
    print(f"{backend}: {len(front)} points on the front, mean distance to the true front {gd:.3f}")
    assert gd < THRESHOLD_GD[backend], gd


# Mean distance of the reported front to the true one after 14 trials (seed 0); measured
# with ax-platform 1.3.1 / botorch 0.18.1: random 0.709, ax 0.054. With one batch of 4 after
# the 6 initial points ax lands 0.358 away, where four single asks land 0.044: Ax's batch
# quality at q=4 is an open problem (issue 12), not what this test is about.
THRESHOLD_GD = {"random": 1.5, "ax": 0.3}


def test_ax_model_phase_on_a_mixed_space() -> None:
    """Ints and choices send Ax to BoTorch's mixed optimizer: our options must suit it."""
    optimizer = get_optimizer("ax", SPACE, {"loss": "minimize"}, seed=2, initialization_budget=3)
    for trial in optimizer.ask(3):
        optimizer.tell(trial.id, {"loss": loss(trial.params)})
    batch = optimizer.ask(2)  # model-based: one fit, two pending-aware suggestions
    assert len(batch) == 2
    for trial in batch:
        check_point(trial.params)
    from tasks.optimizers.ax import AxOptimizer

    assert isinstance(optimizer, AxOptimizer)
    assert optimizer.fallback_batches == 0  # the model generated them, not the fallback


# --- the hyperopt adapter against hyperopt's own loop -------------------------------------
MIXED: dict[str, Any] = {
    "x1": {"type": "float", "low": 1e-4, "high": 10.0, "log": True},
    "x2": {"type": "float", "low": -5.0, "high": 5.0},
    "n": {"type": "int", "low": 1, "high": 50},
    "m": {"type": "int", "low": 2, "high": 256, "log": True},
    "c": {"type": "categorical", "choices": ["a", "b", "c", None]},
    "penalty": {"type": "categorical", "choices": ["l2", "elasticnet"]},
    "ratio": {"type": "float", "low": 0.0, "high": 1.0, "condition": {"penalty": ["elasticnet"]}},
}


def mixed_loss(p: dict[str, Any]) -> float:
    """A smooth mixed-type loss with its optimum inside the space (minimum 0)."""
    return (
        (math.log10(p["x1"]) - 0.3) ** 2
        + 0.3 * (p["x2"] - 1.2) ** 2
        + ((p["n"] - 17) / 10) ** 2
        + (math.log2(p["m"]) - 5) ** 2 / 4
        + {"a": 0.5, "b": 0.0, "c": 0.8, None: 1.0}[p["c"]]
        + (abs(p["ratio"] - 0.7) if p["penalty"] == "elasticnet" else 0.4)
    )


def fmin_points(seed: int, budget: int) -> list[dict[str, Any]]:
    """The points hyperopt's own ``fmin`` with TPE evaluates, in order (it minimizes)."""
    from hyperopt import STATUS_OK, Trials, fmin, tpe

    from tasks.optimizers.hyperopt import _flatten, build_hyperopt_space
    from tasks.optimizers.space import normalise_space

    space = normalise_space(MIXED)
    points: list[dict[str, Any]] = []

    def objective(sample: dict[str, Any]) -> dict[str, Any]:
        point = space.validate_point(_flatten(sample, {}), clip=True)
        points.append(point)
        return {"loss": mixed_loss(point), "status": STATUS_OK}

    fmin(
        objective,
        build_hyperopt_space(space),
        algo=tpe.suggest,
        max_evals=budget,
        trials=Trials(),
        rstate=np.random.default_rng(seed),
        show_progressbar=False,
    )
    return points


def adapter_points(seed: int, budget: int, q: int = 1, **options: Any) -> list[dict[str, Any]]:
    """The points the adapter hands out, q at a time, told as a score to maximize."""
    optimizer = get_optimizer("hyperopt", MIXED, {"score": "maximize"}, seed=seed, **options)
    points: list[dict[str, Any]] = []
    while len(points) < budget:
        batch = optimizer.ask(min(q, budget - len(points)))
        for trial in batch:
            optimizer.tell(trial.id, {"score": -mixed_loss(trial.params)})
            points.append(trial.params)
    return points


def test_hyperopt_adapter_suggests_what_fmin_evaluates_at_q1() -> None:
    """Same seed, hyperopt's own options: the adapter is fmin's TPE, point for point.

    This covers the sign flip (a maximized score told as a minimized loss), the seed
    stream, hp.choice indices (the conditional branch) and log/int conversions.
    """
    ours = adapter_points(seed=3, budget=40, n_startup_jobs=20)
    theirs = fmin_points(seed=3, budget=40)
    assert ours == theirs


def test_hyperopt_adapter_is_not_clearly_worse_than_fmin() -> None:
    """Mean best over 10 seeds: the adapter with its own defaults vs fmin with hyperopt's.

    Measured (seeds 0-9, 40 trials): fmin 1.44, adapter q=1 1.44 (the same points: the
    defaults are hyperopt's), q=4 1.59, random 2.24; with 10 start-up points instead of 20
    the adapter gave 1.31 at q=1 and 1.78 at q=4. Tolerance: 0.25 in loss against fmin
    (about one standard error over these seeds), for q=1 and q=4: at q=4 the pending points
    count as unknown (infinitely bad) losses, as in hyperopt's own parallel back ends.
    """
    from tasks.optimizers.space import normalise_space

    seeds, budget = range(10), 40

    def mean_best(runs: list[list[dict[str, Any]]]) -> float:
        return float(np.mean([min(mixed_loss(p) for p in run) for run in runs]))

    fmin_best = mean_best([fmin_points(s, budget) for s in seeds])
    q1 = mean_best([adapter_points(s, budget) for s in seeds])
    q4 = mean_best([adapter_points(s, budget, q=4) for s in seeds])
    space, rng = normalise_space(MIXED), np.random.default_rng(0)
    random_best = mean_best([[space.sample(rng) for _ in range(budget)] for _ in seeds])
    print(f"mean best: fmin {fmin_best:.3f}, q=1 {q1:.3f}, q=4 {q4:.3f}, random {random_best:.3f}")
    assert fmin_best < random_best - 0.25  # the problem separates TPE from random search
    assert q1 <= fmin_best + 0.25
    assert q4 <= fmin_best + 0.25
