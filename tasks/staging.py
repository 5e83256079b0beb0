"""The best trade-off of a study's Pareto set goes to ``staging``: the choice rule, and the alias.

Two stated rules over the Pareto set, both on *normalized losses*: each objective turned into
a loss by its direction (``tasks.metrics.sign``) and scaled to [0, 1] by min-max over the set,
so 0 is the best value any member reaches and 1 the worst.

- ``knee`` (the default): the member closest, in Euclidean distance, to the utopia point
  (every objective at its best, the origin). This is compromise programming with p = 2
  (Zeleny, 1973; pymoo's "Compromise Programming" decision-making method is the same rule).
  It works for any number of objectives, where "farthest from the line between the
  extremes" is defined for two only.
- ``utility``: the member with the smallest weighted sum of normalized losses, weights from
  ``registration.choice.weights`` (an objective left out weighs 0).

Ties go to the member listed first (the register plan lists them best first by the primary
objective). A spec with one objective has no trade-off: nothing is staged, the best trial
takes its usual place. The rule is a dozen lines of numpy; pymoo has it too, but would be a
large dependency for one distance.

The staged version is a shadow arm of the rollout service (``rollout/pool.py``): scored
beside the champion, never answering a request. What makes it a challenger is the admin
route ``POST /admin/arms`` with its version (``rollout/admin.py``'s ``add_arm``), never the
registration itself: the gates have passed by then, and staging is where a human (or a
script) looks at its shadow scores before it takes live traffic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from contract import CHAMPION, STAGING, aliases_of, stage
from tasks.metrics import sign as loss_sign

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from tasks.registry import GatedVersion
    from tasks.spec import ChoiceSpec, StudySpec


class Scored(Protocol):
    """What the rule needs of a trial: its id and its objective values."""

    @property
    def trial_id(self) -> Any: ...
    @property
    def values(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class Choice:
    """The staged trial, the rule that chose it and its score under the rule."""

    trial_id: str
    rule: str
    score: float  # knee: distance to utopia; utility: weighted normalized loss (lower wins)
    size: int  # members of the set it was chosen from

    @property
    def reason(self) -> str:
        what = "distance to utopia" if self.rule == "knee" else "weighted normalized loss"
        return (
            f"best trade-off ({self.rule}) of {self.size} Pareto candidates: "
            f"trial {self.trial_id}, {what} {self.score:.4g}"
        )


def normalized_losses(
    points: Sequence[Mapping[str, float]], objectives: Mapping[str, str]
) -> np.ndarray:
    """Return an (n, k) array of losses scaled to [0, 1] per objective over ``points``.

    An objective on which every point agrees scales to 0 (it decides nothing).
    """
    signs = np.array([loss_sign(d) for d in objectives.values()], dtype=float)
    raw = np.array([[float(p[m]) for m in objectives] for p in points], dtype=float)
    losses = raw * signs
    low, high = losses.min(axis=0), losses.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return (losses - low) / span


def knee_index(losses: np.ndarray) -> tuple[int, float]:
    """Return the row closest to the utopia point (the origin) and its distance."""
    distance = np.linalg.norm(losses, axis=1)
    i = int(np.argmin(distance))
    return i, float(distance[i])


def utility_index(
    losses: np.ndarray, objectives: Sequence[str], weights: Mapping[str, float]
) -> tuple[int, float]:
    """Return the row of smallest weighted normalized loss and that loss."""
    w = np.array([float(weights.get(m, 0.0)) for m in objectives], dtype=float)
    total = losses @ w
    i = int(np.argmin(total))
    return i, float(total[i])


def choose(
    trials: Sequence[Scored], objectives: Mapping[str, str], choice: ChoiceSpec
) -> Choice | None:
    """Apply the spec's rule to ``trials`` (a Pareto set); None when nothing is to be staged."""
    if choice.rule == "none" or len(objectives) < 2:
        return None
    usable = [t for t in trials if all(np.isfinite(t.values.get(m, np.nan)) for m in objectives)]
    if not usable:
        return None
    losses = normalized_losses([t.values for t in usable], objectives)
    if choice.rule == "utility":
        i, score = utility_index(losses, list(objectives), choice.weights)
    else:
        i, score = knee_index(losses)
    return Choice(str(usable[i].trial_id), choice.rule, score, len(usable))


def choose_for(spec: StudySpec, trials: Sequence[Scored]) -> Choice | None:
    """``choose`` with the spec's objectives and ``registration.choice``."""
    return choose(trials, spec.objectives, spec.registration.choice)


def with_choice(trials: list[Any], pareto: Sequence[Any], choice: Choice | None) -> list[Any]:
    """Return ``trials`` with the chosen Pareto member in it (in place of the last if full).

    ``registration.max_candidates`` trims the set by the primary objective; the best
    trade-off is registered even when that trim would leave it out.
    """
    if choice is None or any(str(t.trial_id) == choice.trial_id for t in trials):
        return trials
    chosen = next(t for t in pareto if str(t.trial_id) == choice.trial_id)
    return [*trials[: max(len(trials) - 1, 0)], chosen] if trials else [chosen]


def hold_back(
    client: MlflowClient, name: str, gated: Sequence[GatedVersion], staged: str | None
) -> tuple[list[GatedVersion], str | None]:
    """Split the staged version off the versions that get live aliases.

    Returns (versions for ``assign_aliases``, the version to stage or None). Nothing is
    staged when the version failed its gates, already holds a live alias (champion or a
    challenger, from an earlier run or the admin route), or is the only passer of a model
    with no champion (it is crowned as before: a shadow needs a champion to score beside).
    """
    from mlflow.exceptions import MlflowException

    entry = next((g for g in gated if g.version == staged), None)
    if entry is None or not entry.passed:
        return list(gated), None
    try:
        aliases = aliases_of(client, name)
    except MlflowException:
        aliases = {}
    if any(v == entry.version and a != STAGING for a, v in aliases.items()):
        return list(gated), None
    others = [g for g in gated if g.version != entry.version]
    if CHAMPION not in aliases and not any(g.passed for g in others):
        return list(gated), None
    return others, entry.version


def set_staging(client: MlflowClient, name: str, version: str, reason: str) -> None:
    """Point ``staging`` at ``version`` (after every tag: the alias moves last); record why."""
    stage(client, name, version, reason)
