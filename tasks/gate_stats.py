"""How sure a hold-out is: the gates judge a difference only when their rows can show it.

A gate on a point estimate is meaningless on a small hold-out. After a drift a retrain has
a few hundred post-change rows to be judged on (a 20 % hold-out of one to three days of
labels, 15-40 conversions over five age bands); there, equalized odds compares true-positive
rates of groups holding one to five positives, and its point value is 0.5-1.0 for a model
that treats every group alike. So each gate states a confidence level and fails a candidate
only when its hold-out *shows* the breach at that level; with many rows the intervals
shrink to the point and the rule is the point rule again.

- **Performance against the champion** (:func:`paired_difference_interval`): a paired
  bootstrap (scipy) of the candidate's metric minus the champion's on the same resampled
  rows (the champion judged on the same post-change hold-out). The candidate fails when
  the whole interval lies beyond the allowed regression.
- **Fairness** (:func:`rate_gap_lower_bound`): Clopper-Pearson intervals of each group's
  rate (selection rate; true- and false-positive rates), simultaneous over the groups
  (Bonferroni). The largest gap the rows show is the largest lower bound minus the
  smallest upper bound; the candidate fails when that exceeds the limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIDENCE = 0.95
# Metrics that are means over rows (log loss, Brier) resample the rows' terms: cheap, so
# many resamples. The others re-score both models per resample (sklearn's checks cost
# 5-25 ms a call on this machine): a few hundred, a few seconds per gated candidate.
MEAN_RESAMPLES = 5_000
BOOTSTRAP_RESAMPLES = 400
BOOTSTRAP_SEED = 0  # the same hold-out gives the same verdict


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval and the estimate it is around."""

    estimate: float
    low: float
    high: float
    confidence: float

    def text(self) -> str:
        pct = f"{self.confidence:.0%}"
        return f"{self.estimate:.4g} ({pct} CI {self.low:.4g} .. {self.high:.4g})"


def paired_difference_interval(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Interval:
    """Return a percentile-bootstrap interval of ``statistic(rows)`` over ``n`` rows.

    ``statistic`` takes an index array (a resample of ``range(n)``) and returns, e.g., the
    candidate's metric minus the champion's on those rows: both models are scored on the
    same resample, so the interval is of the paired difference. A resample where the
    statistic is undefined (NaN: one class only) makes the interval NaN.
    """
    if n < 2:
        nan = float("nan")
        return Interval(statistic(np.arange(n)), nan, nan, confidence)
    low, high = _percentile_bounds(np.arange(n), statistic, False, resamples, confidence, seed)
    return Interval(statistic(np.arange(n)), low, high, confidence)


def mean_difference_interval(
    differences: np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = MEAN_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Interval:
    """Return a percentile-bootstrap interval of the mean of per-row paired differences."""
    d = np.asarray(differences, dtype=np.float64)
    if len(d) < 2:
        nan = float("nan")
        return Interval(float(d.mean()) if len(d) else nan, nan, nan, confidence)
    low, high = _percentile_bounds(d, np.mean, True, resamples, confidence, seed)
    return Interval(float(d.mean()), low, high, confidence)


def _percentile_bounds(
    data: np.ndarray,
    statistic: Callable[..., Any],
    vectorized: bool,
    resamples: int,
    confidence: float,
    seed: int,
) -> tuple[float, float]:
    """One percentile bootstrap (scipy) over the rows of ``data``: the interval's bounds."""
    from scipy.stats import bootstrap

    result = bootstrap(
        (data,),
        statistic,
        vectorized=vectorized,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    return float(ci.low), float(ci.high)


def _clopper_pearson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    from scipy.stats import binomtest

    if trials == 0:
        return 0.0, 1.0
    ci = binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def group_rate_intervals(
    hits: np.ndarray, groups: np.ndarray, *, confidence: float, comparisons: int
) -> dict[str, tuple[float, float, int]]:
    """Return ``{group: (low, high, rows)}`` of the rate of ``hits`` in each group.

    Each interval is at level ``1 - (1 - confidence) / comparisons``, so all of them hold
    at once with probability at least ``confidence`` (Bonferroni).
    """
    level = 1.0 - (1.0 - confidence) / max(1, comparisons)
    out: dict[str, tuple[float, float, int]] = {}
    for group in np.unique(groups):
        mask = groups == group
        low, high = _clopper_pearson(int(hits[mask].sum()), int(mask.sum()), level)
        out[str(group)] = (low, high, int(mask.sum()))
    return out


def rate_gap_lower_bound(intervals: dict[str, tuple[float, float, int]]) -> float:
    """Return the smallest between-group gap in a rate that the intervals still allow.

    The largest group's lower bound minus the smallest group's upper bound, or 0 when the
    intervals overlap: a gap above it is shown by the rows, one below it is not.
    """
    judged = [(lo, hi) for lo, hi, rows in intervals.values() if rows > 0]
    if len(judged) < 2:
        return 0.0
    return max(0.0, max(lo for lo, _ in judged) - min(hi for _, hi in judged))


def parity_gap_bounds(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    sensitive: np.ndarray,
    *,
    confidence: float = CONFIDENCE,
) -> dict[str, float]:
    """Return the gaps the rows show, at ``confidence`` simultaneously.

    ``demographic_parity``: selection rates; ``equalized_odds``: the larger of the
    true-positive-rate and false-positive-rate gaps (fairlearn's worst case), each
    group's two rates counted as two comparisons.
    """
    y_true, y_pred = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    groups = np.asarray(sensitive).astype(str)
    k = len(np.unique(groups))
    selection = group_rate_intervals(y_pred, groups, confidence=confidence, comparisons=k)
    positives, negatives = y_true == 1, y_true == 0
    tpr = group_rate_intervals(
        y_pred[positives], groups[positives], confidence=confidence, comparisons=2 * k
    )
    fpr = group_rate_intervals(
        y_pred[negatives], groups[negatives], confidence=confidence, comparisons=2 * k
    )
    return {
        "demographic_parity": rate_gap_lower_bound(selection),
        "equalized_odds": max(rate_gap_lower_bound(tpr), rate_gap_lower_bound(fpr)),
    }
