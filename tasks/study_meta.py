"""What a study keeps beside its optimizer state: why each enqueued trial ran, and the spec.

``<study>.meta.json`` records which trial ids are the family's library defaults and which
are warm starts (so the result can say by how much tuning won), and a fingerprint of the
parts of the spec that define the search, so a resume with a changed spec is refused
with a message instead of silently mixing two studies.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.settings import PipelineSettings, get_settings

if TYPE_CHECKING:
    from tasks.optimizers.space import Space
    from tasks.spec import StudySpec


class StudyStateError(RuntimeError):
    """A saved study cannot be resumed with this spec (say what to change)."""


# The spec fields that define what is searched and how it is scored. Budget, q, gates,
# registration and drift may change between runs of one study (e.g. ``--trials``).
SEARCH_FIELDS: tuple[str, ...] = (
    *("task", "data", "model", "objectives", "optimizer", "optimizer_options"),
    *("evaluation", "seed", "warm_start", "defaults_first"),
)


@dataclass
class StudyMeta:
    """Roles of the enqueued trials and the spec's search fields, saved at creation."""

    defaults: list[str] = field(default_factory=list)
    warm_start: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # defaults moved into the search space
    search: dict[str, Any] = field(default_factory=dict)

    def role(self, trial_id: str) -> str:
        if trial_id in self.defaults:
            return "defaults"
        return "warm_start" if trial_id in self.warm_start else "search"

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1, default=str))

    @classmethod
    def load(cls, path: Path) -> StudyMeta | None:
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


def meta_path(state_path: Path) -> Path:
    """Return the sidecar of the optimizer state at ``state_path``."""
    return state_path.with_name(state_path.stem + ".meta.json")


def search_fields(spec: StudySpec) -> dict[str, Any]:
    """Return the spec's search-defining fields as plain JSON."""
    dumped = spec.model_dump(mode="json")
    return json.loads(json.dumps({k: dumped.get(k) for k in SEARCH_FIELDS}, default=str))


def changed_fields(saved: dict[str, Any], spec: StudySpec) -> list[str]:
    """Return the dotted names of the search fields that differ from the saved ones."""
    now = search_fields(spec)
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        elif a != b:
            out.append(f"{prefix} ({a!r} -> {b!r})")

    walk(saved, now, "")
    return out


def library_defaults(
    family: str, space: Space, task: str, seed: int
) -> tuple[dict[str, Any], list[str]]:
    """Return the family's untuned estimator as a point of ``space``, and what moved.

    The values come from the estimator the family builds with no parameters (its library
    defaults, e.g. scikit-learn's). A default the space cannot hold is moved to the nearest
    point it can (a categorical to its first choice, ``None`` for a bound to that bound), and
    each move is noted, so the report says what "defaults" meant.
    """
    from tasks.models import get_family

    try:
        estimator = get_family(family).builder({}, task, seed)  # type: ignore[arg-type]
        given = estimator.get_params()
    except Exception as exc:  # noqa: BLE001 - a family that needs parameters has no defaults
        raise DefaultsUnavailable(
            f"model family {family!r} has no library defaults: {exc}"
        ) from exc
    point: dict[str, Any] = {}
    notes: list[str] = []
    for param in space:
        if not space.is_active(param, point):
            continue
        if param.name not in given:
            point[param.name] = _centre(param)
            notes.append(f"{param.name}: not a parameter of the estimator, {point[param.name]!r}")
            continue
        value = given[param.name]
        point[param.name] = _project(param, value)
        if not _same_value(point[param.name], value):
            moved = point[param.name]
            notes.append(f"{param.name}: library default {value!r} is outside the space, {moved!r}")
    return point, notes


class DefaultsUnavailable(ValueError):
    """The family's estimator cannot be built without parameters."""


def _centre(param: Any) -> Any:
    if param.type == "categorical":
        return param.choices[0]
    middle = math.sqrt(param.low * param.high) if param.log else (param.low + param.high) / 2
    return param.coerce(middle, clip=True)


def _project(param: Any, value: Any) -> Any:
    from tasks.optimizers.space import PointError

    try:
        return param.coerce(value, clip=True)
    except PointError:
        pass
    if param.type == "categorical":
        return param.choices[0]
    # None for a bound (max_depth=None: unbounded) is nearest to the high end.
    return param.coerce(param.high, clip=True) if value is None else _centre(param)


def _same_value(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def study_state_path(study_name: str, settings: PipelineSettings | None = None) -> Path:
    """Return where a study's optimizer state is saved (for resume)."""
    return (settings or get_settings()).studies_dir / f"{study_name}.json"


def check_resume(spec: StudySpec, settings: PipelineSettings | None = None) -> None:
    """Refuse, naming the fields, to resume a saved study with a changed search spec.

    Budget, q, gates and registration may change between runs; what is searched and how
    it is scored may not (a new name starts a new study). Reads JSON only: cheap.
    """
    state = study_state_path(spec.name, settings)
    meta = StudyMeta.load(meta_path(state)) if state.exists() else None
    if meta is not None:
        changed = changed_fields(meta.search, spec)
        if changed:
            refuse_resume(spec, state, changed)


def refuse_resume(spec: StudySpec, state: Path, changed: list[str]) -> None:
    raise StudyStateError(
        f"study {spec.name!r} was saved with another spec; changed: {'; '.join(changed[:6])}. "
        f"Resume with the saved spec, give the study a new name (e.g. {spec.name}-v2), or "
        f"delete {state} to start over"
    )


def trials_so_far(study_name: str, settings: PipelineSettings | None = None) -> int:
    """Return how many trials a saved study has handed out (0 for a new study).

    Reads the state file as JSON: no optimizer library is imported.
    """
    import json

    path = study_state_path(study_name, settings)
    if not path.exists():
        return 0
    try:
        return len(json.loads(path.read_text()).get("history", []))
    except (OSError, ValueError):
        return 0
