"""Ax (Bayesian optimization, BoTorch) behind ask/tell, through its ``Client`` API.

Ax imports in about 7 s (torch): this module is imported only when an Ax optimizer is built.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from ax import ChoiceParameterConfig, Client, RangeParameterConfig
from ax.api.utils.generation_strategy_dispatch import choose_generation_strategy
from ax.api.utils.structs import GenerationStrategyDispatchStruct
from ax.exceptions.core import DataRequiredError
from ax.exceptions.generation_strategy import AxGenerationException

from tasks.metrics import sign
from tasks.optimizers.base import Optimizer, Trial, TrialResult
from tasks.optimizers.space import Param

log = logging.getLogger(__name__)

# Ax logs every generated and completed trial at INFO; the flow logs trials itself.
for _name in ("ax", "ax.api.client", "ax.generation_strategy", "ax.adapter"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def _choice_type(choices: tuple[Any, ...]) -> str | None:
    """Return Ax's type for these choices, or None when they need string tokens."""
    if all(isinstance(c, bool) for c in choices):
        return "bool"
    if all(isinstance(c, str) for c in choices):
        return "str"
    if all(isinstance(c, int) and not isinstance(c, bool) for c in choices):
        return "int"
    if all(isinstance(c, float) for c in choices):
        return "float"
    return None


class AxOptimizer(Optimizer):
    """Gaussian-process Bayesian optimization (one or several objectives: a Pareto front).

    Sobol points first (``initialization_budget``, default 8), then BoTorch's modular
    model with qLogNEI (qLogNEHVI for several objectives). A batch is generated
    pending-aware, and may be smaller than asked while initial points await data: the
    model's first point waits for ``min_observed_initialization`` results (default: all
    the initial points; Ax's own default is half).
    The acquisition optimizer keeps Ax's ``num_restarts`` (20) and ``raw_samples`` (1024):
    trimmed to 4 and 128 the adapter lost to Ax's own loop on the quality test's Branin on
    this machine (mean regret 1.12 against 0.36 at q=1), for ~10 % less time. Trimmed:
    ``maxiter`` (50 L-BFGS-B steps instead of 200; all-float spaces only) and
    ``torch_threads`` (1). If generation fails, that batch is random points (logged).
    Conditional parameters are sampled flat and dropped when inactive.
    """

    name = "ax"
    deterministic_resume = False  # Ax's model fitting is not bit-for-bit reproducible

    def __init__(
        self,
        space: Mapping[str, Any],
        objectives: Mapping[str, str],
        seed: int = 0,
        *,
        initialization_budget: int = 8,
        num_restarts: int = 20,
        raw_samples: int = 1024,
        maxiter: int = 50,
        torch_threads: int = 1,
        method: str = "fast",
        min_observed_initialization: int | None = None,
    ) -> None:
        super().__init__(
            space,
            objectives,
            seed,
            initialization_budget=initialization_budget,
            num_restarts=num_restarts,
            raw_samples=raw_samples,
            maxiter=maxiter,
            torch_threads=torch_threads,
            method=method,
            min_observed_initialization=min_observed_initialization,
        )
        if initialization_budget < 1 or num_restarts < 1 or raw_samples < num_restarts:
            raise ValueError(
                f"ax options out of range: {initialization_budget=} (>= 1), "
                f"{num_restarts=} (>= 1), {raw_samples=} (>= num_restarts)"
            )
        self._torch_threads = torch_threads
        # Metric and choice names go through Ax's expression parser: use plain tokens.
        self._metric_names = {name: f"m{i}" for i, name in enumerate(self.objectives)}
        self._tokens: dict[str, dict[Any, Any]] = {}  # param -> {value: ax value}
        self._constants: dict[str, Any] = {}  # one-choice categoricals Ax cannot take
        self._client = Client(random_seed=self.seed)
        self._client.configure_experiment(
            parameters=[cfg for p in self.space if (cfg := self._ax_param(p)) is not None],
            name="banditflow",
        )
        self._client.configure_optimization(
            objective=", ".join(
                ("-" if sign(direction) > 0 else "") + self._metric_names[name]
                for name, direction in self.objectives.items()
            )
        )
        strategy = self._generation_strategy(
            method, initialization_budget, num_restarts, raw_samples, maxiter
        )
        self._client.set_generation_strategy(strategy)
        self._index: dict[str, int] = {}  # our trial id -> Ax trial index
        self._fallback_rng = np.random.default_rng(self.seed + 1)
        self.ask_seconds: list[float] = []  # wall time of each ``_suggest`` (the benchmark's)
        self.fallback_batches = 0  # batches of random points after a generation failure

    def _generation_strategy(
        self,
        method: str,
        initialization_budget: int,
        num_restarts: int,
        raw_samples: int,
        maxiter: int,
    ) -> Any:
        """Return Ax's strategy (Sobol, then BoTorch) with the trimmed acquisition optimizer."""
        strategy = choose_generation_strategy(
            GenerationStrategyDispatchStruct(
                method=method,  # type: ignore[arg-type]
                initialization_budget=initialization_budget,
                initialization_random_seed=self.seed,
                # Ax's own default: the first initial point is the space's centre. Without
                # it the quality test's Branin (tests/tasks/test_ax_quality.py) scored 0.45,
                # 2.30, 1.84 at q=1 against Ax's own loop's 0.44, 0.46, 1.32 with the Ax and
                # BoTorch this project installs now (1.3.1, 0.18.1); with it 0.42, 0.50, 0.66.
                initialize_with_center=True,
                min_observed_initialization_trials=self._min_observed(),
                # Without this, the Sobol node's limit also caps the first model-based
                # batch (4 asked, 1 returned) just after the transition.
                allow_exceeding_initialization_budget=True,
            )
        )
        optimizer_kwargs: dict[str, Any] = {
            "num_restarts": num_restarts,
            "raw_samples": raw_samples,
        }
        if all(p.type == "float" for p in self.space):
            # Only BoTorch's continuous optimizer takes "maxiter"; with int or choice
            # parameters Ax picks the mixed (alternating) optimizer, which rejects it.
            optimizer_kwargs["options"] = {"maxiter": maxiter}
        gen_options = {"model_gen_options": {"optimizer_kwargs": optimizer_kwargs}}
        for node in strategy._nodes:
            for spec in node.generator_specs:
                if "surrogate_spec" in spec.generator_kwargs:  # the BoTorch node
                    spec.generator_gen_kwargs.update(gen_options)
        return strategy

    # -- backend hooks -------------------------------------------------------------------
    def _suggest(self, n: int) -> list[dict[str, Any]]:
        start = time.perf_counter()
        # One batch is generated before its trials join the experiment, so the Sobol node
        # cannot see the budget run out inside it (allow_exceeding_initialization_budget):
        # at q=4 with 5 initial points it handed out 8. A batch that crosses the end of
        # the Sobol phase gets only the Sobol points left, as Ax's own loop does; the model
        # then waits for them (asking the model's points at once, with 4 of 5 results in,
        # scored 2.69 against 1.10 on the quality test's Branin).
        left = self._initial_left()
        # The model's first points wait for every initial point's result (Ax's default is
        # half of them): at q=4 in the flow's loop the first model batch saw 5 of 8 Sobol
        # results, and on hgb-breast_cancer seed 1 its best one was still running. Waiting
        # (min_observed_initialization = the budget) took the adapter's q=4 mean best from
        # -0.1002 to -0.0992 there, q=1 -0.0983 (3 seeds, 24 trials); q=1 is unchanged.
        # On logreg-breast_cancer q=4 went -0.0717 -> -0.0724 (q=1 -0.0718): within noise.
        if not left and self._waiting_for_initial():
            log.info("Ax waits for its initial points' results before the model's")
            return []
        generated = self._generate(min(n, left) if left else n)
        points: list[dict[str, Any]] = []
        first = int(self._peek_next_id())
        for offset, (index, ax_params) in enumerate(generated.items()):
            full = self._experiment_params(index) if ax_params is None else ax_params
            self._index[str(first + offset)] = index
            points.append(self._from_ax(full))
        self.ask_seconds.append(time.perf_counter() - start)
        return points

    def _generate(self, n: int) -> dict[int, Any]:
        """Ask Ax for up to ``n`` trials; fewer while it waits for data; random on failure."""
        generated: dict[int, Any]
        try:
            with self._quiet_torch():
                generated = self._client.get_next_trials(max_trials=n)
        except (DataRequiredError, AxGenerationException) as exc:
            # The strategy waits for data (MaxTrialsAwaitingData and friends): give what
            # there is, and never block; the flow asks again after its next tell.
            log.info("Ax generated no trial now (%s); returning fewer", exc)
            generated = {}
        except Exception as exc:  # noqa: BLE001 - any Ax/BoTorch/torch failure
            # A model that fails to fit must not end the study: fall back to random points.
            log.warning("Ax generation failed (%s); using random points for this batch", exc)
            self.fallback_batches += 1
            generated = {}
            for _ in range(n):
                params = self.space.sample(self._fallback_rng)
                generated[self._client.attach_trial(self._to_ax(params))] = None
        return generated

    def _initial_left(self) -> int:
        """Sobol points still to hand out (0 once the model-based phase may start)."""
        from ax.core.base_trial import TrialStatus

        told = sum(
            1
            for t in self._client._experiment.trials.values()
            if t.status not in (TrialStatus.FAILED, TrialStatus.ABANDONED)
        )
        return max(self.options["initialization_budget"] - told, 0)

    def _min_observed(self) -> int:
        value = self.options["min_observed_initialization"]
        return int(self.options["initialization_budget"] if value is None else value)

    def _waiting_for_initial(self) -> bool:
        """Whether initial points still running should be seen before the model's first.

        Never true with nothing running: the study must not stall (e.g. pruned initial
        trials, which Ax does not count as observed).
        """
        from ax.core.base_trial import TrialStatus

        statuses = [t.status for t in self._client._experiment.trials.values()]
        observed = sum(s in (TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED) for s in statuses)
        running = any(s.is_running or s == TrialStatus.CANDIDATE for s in statuses)
        return running and observed < self._min_observed()

    def _register(self, trial: Trial) -> None:
        self._index[trial.id] = self._client.attach_trial(self._to_ax(trial.params))

    def _observe(self, result: TrialResult) -> None:
        index = self._index[result.id]
        data = {self._metric_names[k]: v for k, v in result.values.items() if k in self.objectives}
        if result.status == "completed":
            self._client.complete_trial(index, raw_data=data)
        elif result.status == "pruned" and data:
            self._client.attach_data(index, raw_data=data)
            self._client.mark_trial_early_stopped(index)
        elif result.status == "pruned":
            self._client.mark_trial_abandoned(index)
        else:
            self._client.mark_trial_failed(index, failed_reason=result.reason)

    # -- conversions ---------------------------------------------------------------------
    def _ax_param(self, param: Param) -> RangeParameterConfig | ChoiceParameterConfig | None:
        if param.type == "categorical":
            if len(param.choices) == 1:
                self._constants[param.name] = param.choices[0]
                return None
            kind = _choice_type(param.choices)
            if kind is None:  # mixed types, None, lists: Ax takes string tokens
                self._tokens[param.name] = {f"c{i}": c for i, c in enumerate(param.choices)}
                return ChoiceParameterConfig(
                    name=param.name,
                    values=list(self._tokens[param.name]),
                    parameter_type="str",
                    is_ordered=False,
                )
            return ChoiceParameterConfig(
                name=param.name,
                values=list(param.choices),
                parameter_type=kind,  # type: ignore[arg-type]
                is_ordered=False,
            )
        assert param.low is not None and param.high is not None
        bounds = (
            (int(param.low), int(param.high)) if param.type == "int" else (param.low, param.high)
        )
        return RangeParameterConfig(
            name=param.name,
            parameter_type=param.type,  # type: ignore[arg-type]
            bounds=bounds,  # type: ignore[arg-type]
            scaling="log" if param.log else "linear",
        )

    def _to_ax(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Return a full Ax parameterization: inactive parameters get a neutral value."""
        out: dict[str, Any] = {}
        for param in self.space:
            if param.name in self._constants:
                continue
            if param.name in params:
                value = params[param.name]
            elif param.type == "categorical":
                value = param.choices[0]
            else:
                assert param.low is not None and param.high is not None
                value = (
                    math.sqrt(param.low * param.high) if param.log else (param.low + param.high) / 2
                )
                value = round(value) if param.type == "int" else value
            if param.name in self._tokens:
                value = next(t for t, c in self._tokens[param.name].items() if c == value)
            out[param.name] = value
        return out

    def _from_ax(self, ax_params: Mapping[str, Any]) -> dict[str, Any]:
        point = dict(self._constants)
        for name, value in ax_params.items():
            point[name] = self._tokens[name][value] if name in self._tokens else value
        return self.space.validate_point(point, clip=True)

    def _experiment_params(self, index: int) -> dict[str, Any]:
        arm = self._client._experiment.trials[index].arms[0]
        return dict(arm.parameters)

    @contextmanager
    def _quiet_torch(self) -> Iterator[None]:
        threads = torch.get_num_threads()
        torch.set_num_threads(self._torch_threads)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # BoTorch's numerical and input warnings
                yield
        finally:
            torch.set_num_threads(threads)
