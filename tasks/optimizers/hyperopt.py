"""Hyperopt's TPE behind ask/tell: its Trials/Domain/tpe.suggest machinery, not fmin."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from hyperopt import JOB_STATE_DONE, STATUS_FAIL, STATUS_OK, Domain, Trials, hp, space_eval, tpe
from hyperopt.pyll import scope

from tasks.optimizers.base import CapabilityError, Optimizer, Trial, TrialResult, loss_sign
from tasks.optimizers.space import Param, Space

# A categorical parent becomes an hp.choice over dicts; this key holds the chosen value.
_VALUE = "__banditflow_value__"
_RETRIES = 8  # fresh seeds tried when TPE repeats a point already asked


def _objective_never_called(_: Any) -> None:  # pragma: no cover - the flow evaluates
    raise RuntimeError("the hyperopt adapter does not evaluate trials: the flow does")


def build_hyperopt_space(space: Space) -> dict[str, Any]:
    """Return a pyll space: conditional parameters nested in their parent's hp.choice."""
    nodes: dict[str, Any] = {}

    def node(param: Param) -> Any:
        if param.name in nodes:  # shared by every branch that activates it
            return nodes[param.name]
        if param.type == "categorical":
            children = [c for c in space.children(param.name) if c.condition[0][0] == param.name]
            if children:
                branches = []
                for value in param.choices:
                    branch = {_VALUE: value}
                    for child in children:
                        if any(v == value for v in dict(child.condition)[param.name]):
                            branch[child.name] = node(child)
                    branches.append(branch)
                result = hp.choice(param.name, branches)
            else:
                result = hp.choice(param.name, list(param.choices))
        else:
            assert param.low is not None and param.high is not None
            if param.type == "int" and param.log:
                q = hp.qloguniform(param.name, math.log(param.low), math.log(param.high), 1)
                result = scope.int(q)
            elif param.type == "int":
                result = hp.uniformint(param.name, param.low, param.high)
            elif param.log:
                result = hp.loguniform(param.name, math.log(param.low), math.log(param.high))
            else:
                result = hp.uniform(param.name, param.low, param.high)
        nodes[param.name] = result
        return result

    # A parameter with several parents nests under the first; the others are checked after.
    return {p.name: node(p) for p in space if not p.condition}


def _flatten(sample: Mapping[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    for key, value in sample.items():
        if isinstance(value, Mapping) and _VALUE in value:
            out[key] = value[_VALUE]
            _flatten({k: v for k, v in value.items() if k != _VALUE}, out)
        else:
            out[key] = value
    return out


class HyperoptOptimizer(Optimizer):
    """Tree-structured Parzen estimator (single objective; hyperopt minimizes).

    Options: ``n_startup_jobs`` (random points before TPE, default 20 as in hyperopt: with 10,
    TPE narrowed too early on noisy CV scores and trailed fmin in the quality benchmark),
    ``n_EI_candidates`` (24), ``gamma`` (0.25), ``prior_weight`` (1.0). A batch is asked one
    point at a time with the next seed of fmin's stream, the pending points in ``Trials``
    with an unknown (infinite) loss as fmin's parallel back ends leave them, because asking
    ``tpe.suggest`` for several ids at once returns the same point several times. Failed and
    pruned trials are told as ``STATUS_FAIL`` (infinite loss), as fmin tells an exception.
    """

    name = "hyperopt"
    multi_objective = False
    deterministic_resume = True

    def __init__(
        self,
        space: Mapping[str, Any],
        objectives: Mapping[str, str],
        seed: int = 0,
        *,
        n_startup_jobs: int = 20,
        n_EI_candidates: int = 24,  # noqa: N803 - hyperopt's own name
        gamma: float = 0.25,
        prior_weight: float = 1.0,
    ) -> None:
        super().__init__(
            space,
            objectives,
            seed,
            n_startup_jobs=n_startup_jobs,
            n_EI_candidates=n_EI_candidates,
            gamma=gamma,
            prior_weight=prior_weight,
        )
        if len(self.objectives) != 1:
            raise CapabilityError(
                f"hyperopt optimizes a single objective, got {list(self.objectives)}: use "
                "get_optimizer('ax', ...) for a Pareto front, or keep one objective and bound "
                "the others with gates"
            )
        if n_startup_jobs < 0 or n_EI_candidates < 1 or not 0 < gamma < 1:
            raise ValueError(
                f"hyperopt options out of range: {n_startup_jobs=} (>= 0), "
                f"{n_EI_candidates=} (>= 1), {gamma=} (in (0, 1))"
            )
        ((self._metric, direction),) = self.objectives.items()
        self._sign = loss_sign(direction)  # hyperopt minimizes: the one flip, at this boundary
        self._expr = build_hyperopt_space(self.space)
        self._domain = Domain(_objective_never_called, self._expr)
        self._trials = Trials()
        self._docs: dict[int, dict[str, Any]] = {}
        # fmin's own seed stream (one draw of rstate.integers(2**31 - 1) per suggestion), so
        # at q=1 this adapter suggests exactly what ``fmin(rstate=default_rng(seed))`` would;
        # the generator's state is saved, so a resumed study continues the same stream.
        self._rstate = np.random.default_rng(self.seed)
        self._algo_options = {
            "n_startup_jobs": n_startup_jobs,
            "n_EI_candidates": n_EI_candidates,
            "gamma": gamma,
            "prior_weight": prior_weight,
        }

    # -- backend hooks -------------------------------------------------------------------
    def _suggest(self, n: int) -> list[dict[str, Any]]:
        points: list[dict[str, Any]] = []
        for _ in range(n):
            (tid,) = self._trials.new_trial_ids(1)
            expected = int(self._peek_next_id()) + len(points)
            if tid != expected:
                raise RuntimeError(f"hyperopt trial ids out of step: {tid}, expected {expected}")
            taken = [r.params for r in self._history.values()] + points
            for _attempt in range(_RETRIES):
                seed = int(self._rstate.integers(2**31 - 1))
                (doc,) = tpe.suggest(
                    [tid], self._domain, self._trials, seed, verbose=False, **self._algo_options
                )
                params = self._params_from_vals(doc["misc"]["vals"])
                if params not in taken:
                    break
            self._insert(doc)
            points.append(params)  # the base class gives it the id ``str(tid)``
        return points

    def _register(self, trial: Trial) -> None:
        (tid,) = self._trials.new_trial_ids(1)
        if str(tid) != trial.id:
            raise RuntimeError(f"hyperopt trial ids out of step: {tid} for trial {trial.id!r}")
        idxs, vals = self._vals_from_params(tid, trial.params)
        misc = {
            "tid": tid,
            "cmd": self._domain.cmd,
            "workdir": self._domain.workdir,
            "idxs": idxs,
            "vals": vals,
        }
        (doc,) = self._trials.new_trial_docs([tid], [None], [self._domain.new_result()], [misc])
        self._insert(doc)

    def _observe(self, result: TrialResult) -> None:
        doc = self._docs[int(result.id)]
        doc["state"] = JOB_STATE_DONE
        if result.status == "completed":
            doc["result"] = {"status": STATUS_OK, "loss": self._sign * result.values[self._metric]}
        else:
            # Failed and pruned points count as worse than any completed one (loss None -> inf
            # in tpe.suggest): TPE steers away from them, and the study goes on.
            doc["result"] = {"status": STATUS_FAIL}
        self._trials.refresh()

    def _backend_state(self) -> dict[str, Any]:
        return {"rstate": self._rstate.bit_generator.state}

    def _restore_backend_state(self, state: Mapping[str, Any]) -> None:
        if "rstate" in state:
            self._rstate.bit_generator.state = state["rstate"]
        else:  # a state saved before the stream was fmin's: continue as many draws on
            self._rstate.integers(2**31 - 1, size=int(state.get("asks", 0)))

    # -- conversions ---------------------------------------------------------------------
    def _insert(self, doc: dict[str, Any]) -> None:
        self._trials.insert_trial_docs([doc])
        self._trials.refresh()
        # insert_trial_docs stores a SONified copy: keep the stored one to update on tell.
        self._docs[doc["tid"]] = self._trials._dynamic_trials[-1]

    def _params_from_vals(self, vals: Mapping[str, list[Any]]) -> dict[str, Any]:
        assignment = {label: v[0] for label, v in vals.items() if len(v)}
        sample = space_eval(self._expr, assignment)
        return self.space.validate_point(_flatten(sample, {}), clip=True)

    def _vals_from_params(
        self, tid: int, params: Mapping[str, Any]
    ) -> tuple[dict[str, list[int]], dict[str, list[Any]]]:
        idxs: dict[str, list[int]] = {label: [] for label in self._domain.params}
        vals: dict[str, list[Any]] = {label: [] for label in self._domain.params}
        for name, value in params.items():
            param = self.space[name]
            if name not in vals:  # active by its own condition, but not in hyperopt's tree
                continue
            if param.type == "categorical":
                value = param.index(value)
            idxs[name] = [tid]
            vals[name] = [value]
        return idxs, vals
