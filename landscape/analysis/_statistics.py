"""Means, 95% confidence intervals and pre-registered criteria, over seeds.

Intervals are Student-t intervals over runs (seeds): mean +- t(0.975, n - 1) * sd / sqrt(n). A
difference between two arms trained with the same seeds is paired (each seed shares its
initialisation and data order across arms), so its interval comes from the per-seed differences.

A criterion "x >= threshold" (or "<=") is judged on the interval of x, not its mean alone:
"holds" when the whole interval is on the passing side, "fails" when the whole interval is on the
failing side, "inconclusive" when the interval contains the threshold. A criterion asking that one
of several intervals pass (at some site, say) holds when one holds and fails when every one fails.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from collections.abc import Sequence

import numpy as np
from scipy import stats
from landscape.sites import BadInputError

CONFIDENCE = 0.95
HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"


@dataclasses.dataclass(frozen=True)
class Estimate:
  """The mean of ``n`` values and its 95% interval [low, high] (equal to the mean when n == 1)."""

  mean: float
  low: float
  high: float
  n: int

  @property
  def half_width(self) -> float:
    return (self.high - self.low) / 2

  def __format__(self, spec: str) -> str:
    spec = spec or ".3f"
    if self.n < 2:
      return f"{self.mean:{spec}} (n=1)"
    return f"{self.mean:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def mean_interval(values: Sequence[float] | np.ndarray) -> Estimate:
  """Mean and 95% t-interval of ``values`` (NaNs are an error: a run that failed must be reported)."""
  values = np.asarray(values, np.float64).ravel()
  if values.size == 0:
    raise BadInputError("mean_interval: no values")
  if not np.all(np.isfinite(values)):
    raise BadInputError(f"mean_interval: non-finite values {values}")
  mean = float(values.mean())
  if values.size == 1:
    return Estimate(mean, mean, mean, 1)
  half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, values.size - 1) * values.std(ddof=1)
               / math.sqrt(values.size))
  return Estimate(mean, mean - half, mean + half, int(values.size))


def paired_difference(first: Sequence[float], second: Sequence[float]) -> Estimate:
  """first - second, seed by seed, with the interval of the paired differences."""
  first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
  if first.shape != second.shape:
    raise BadInputError(f"paired_difference: shapes {first.shape} and {second.shape} differ; "
                        "pair the same seeds")
  return mean_interval(first - second)


def judge(estimate: Estimate, *, at_least: float | None = None, at_most: float | None = None) -> str:
  """HOLDS, FAILS or INCONCLUSIVE for "estimate >= at_least" or "estimate <= at_most"."""
  if (at_least is None) == (at_most is None):
    raise BadInputError("judge: give exactly one of at_least and at_most")
  if at_least is not None:
    if estimate.low >= at_least:
      return HOLDS
    return FAILS if estimate.high < at_least else INCONCLUSIVE
  if estimate.high <= at_most:
    return HOLDS
  return FAILS if estimate.low > at_most else INCONCLUSIVE


def judge_any(verdicts: Iterable[str]) -> str:
  """The verdict on "at least one of these holds": HOLDS if one holds, FAILS if every one fails."""
  verdicts = list(verdicts)
  if not verdicts:
    raise BadInputError("judge_any: no verdicts")
  if HOLDS in verdicts:
    return HOLDS
  return FAILS if all(verdict == FAILS for verdict in verdicts) else INCONCLUSIVE
