"""The pre-registered criteria as data, and the one function that judges any of them.

A criterion compares two per-seed quantities, each a metric of one arm (named, or the best of a
family on validation), through a statistic of the two (by default their difference paired by seed,
with its 95% interval over seeds), against a bound in a direction. A metric with ``{site}`` in its
name is measured at every probed site, and the criterion asks for some site: it holds where one
site holds and fails where every site fails (`analysis.judge_any`).

Adding a criterion is one more `Criterion` in `PREREGISTERED`, plus, where no statistic fits, one
function of two (S,) arrays that returns an `analysis.Estimate`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import numpy as np

from landscape import analysis
from landscape.block_vs_reshape._results import HEADLINE_METRICS
from landscape.block_vs_reshape._results import ArmResult
from landscape.block_vs_reshape._results import best_of
from landscape.sites import BadInputError

AT_LEAST, AT_MOST = "at least", "at most"
_SYMBOLS = {AT_LEAST: ">=", AT_MOST: "<="}
NOT_RUN = "not run"  # the verdict of a criterion that cannot be judged: an arm it reads is absent

OOD_ACCURACY = HEADLINE_METRICS["ood_accuracy"]
DECODABILITY = "decodability/{site}"
DECODABILITY_CHANCE = "decodability_chance/{site}"

Statistic = Callable[[np.ndarray, np.ndarray], analysis.Estimate]


@dataclasses.dataclass(frozen=True)
class Operand:
  """A metric of one arm, per seed: the arm named ``arm``, or the best arm of ``family``.

  ``metric`` is a key of `ArmResult.final`; ``{site}`` in it stands for each probed site. The best
  of a family is the one with the best validation score at its chosen grid point (`best_of`).
  """

  metric: str
  arm: str | None = None
  family: str | None = None

  def __post_init__(self):
    if (self.arm is None) == (self.family is None):
      raise BadInputError(f"Operand({self.metric!r}): give exactly one of arm and family, got "
                          f"arm={self.arm!r}, family={self.family!r}")

  @property
  def per_site(self) -> bool:
    return "{site}" in self.metric

  def select(self, results: Sequence[ArmResult]) -> ArmResult | None:
    """The arm this operand reads, or None when it was not run."""
    if self.family is not None:
      return best_of(list(results), self.family)
    return next((result for result in results if result.arm == self.arm), None)

  def wanted(self) -> str:
    """What has to have run, in words: "the oracle", "a blocking arm"."""
    return f"the {self.arm}" if self.arm is not None else f"a {self.family} arm"


def best(family: str, metric: str) -> Operand:
  return Operand(metric, family=family)


def arm(name: str, metric: str) -> Operand:
  return Operand(metric, arm=name)


@dataclasses.dataclass(frozen=True)
class Criterion:
  """``statistic(first, second)`` is ``direction`` (AT_LEAST or AT_MOST) ``bound``.

  statement: the criterion in a few words, for the report's list of criteria; may use {direction},
    {symbol} (>= or <=) and {bound}.
  sentence: the verdict sentence; may use {first} and {second} (the arms compared, with their chosen
    hyper-parameters), {estimate} (an `analysis.Estimate`), {direction}, {bound} and {verdict}; for
    a per-site criterion also {site} (the site most in the criterion's favour, whose estimate is
    {estimate}) and {per_site} (every site's estimate).
  """

  name: str
  first: Operand
  second: Operand
  direction: str
  bound: float
  statement: str
  sentence: str
  statistic: Statistic = analysis.paired_difference

  def __post_init__(self):
    if self.direction not in _SYMBOLS:
      raise BadInputError(f"Criterion {self.name!r}: direction={self.direction!r}; expected "
                          f"{AT_LEAST!r} or {AT_MOST!r}")
    if self.first.per_site != self.second.per_site:
      raise BadInputError(f"Criterion {self.name!r}: compares {self.first.metric!r} with "
                          f"{self.second.metric!r}; either both are per site or neither is")

  def describe(self) -> str:
    return self.statement.format(direction=self.direction, symbol=_SYMBOLS[self.direction],
                                 bound=self.bound)


@dataclasses.dataclass(frozen=True)
class Verdict:
  """A criterion judged on one task: HOLDS, FAILS, INCONCLUSIVE or NOT_RUN, and why.

  estimate: the statistic with its 95% interval (at the site most in the criterion's favour, for a
  per-site criterion); None when the criterion could not be judged.
  """

  name: str
  outcome: str
  sentence: str
  estimate: analysis.Estimate | None = None

  def as_dict(self) -> dict[str, Any]:
    estimate = None if self.estimate is None else dataclasses.asdict(self.estimate)
    return dict(name=self.name, verdict=self.outcome, sentence=self.sentence, estimate=estimate)


def describe(result: ArmResult) -> str:
  """The arm and its chosen hyper-parameters, for a sentence: "`explanation` (weight=0.3)"."""
  chosen = result.chosen_hyperparameters()
  return f"`{result.arm}`" + (f" ({chosen})" if chosen else "")


def measure(first: Operand, second: Operand, results: Sequence[ArmResult],
            statistic: Statistic = analysis.paired_difference
            ) -> dict[str | None, analysis.Estimate] | None:
  """``statistic(first, second)`` per probed site (keyed by site; by None when not per site).

  None when an arm the operands read was not run. The two arms must hold the same seeds, in order.
  """
  first_result, second_result = first.select(results), second.select(results)
  if first_result is None or second_result is None:
    return None
  if first_result.seeds != second_result.seeds:
    raise BadInputError(f"{first_result.arm} and {second_result.arm} were trained with different "
                        f"seeds ({first_result.seeds} vs {second_result.seeds}); they cannot be "
                        "paired")
  sites = first_result.sites() if first.per_site else [None]
  return {site: statistic(first_result.final[first.metric.format(site=site)],
                          second_result.final[second.metric.format(site=site)])
          for site in sites}


def evaluate(criterion: Criterion, results: Sequence[ArmResult]) -> Verdict:
  """Judges ``criterion`` from one task's results: the verdict, the estimate and the sentence."""
  first, second = criterion.first.select(results), criterion.second.select(results)
  missing = list(dict.fromkeys(operand.wanted() for operand, result in (
      (criterion.first, first), (criterion.second, second)) if result is None))
  if missing:
    return Verdict(criterion.name, NOT_RUN, (
        f"{criterion.name}: not judged, {' and '.join(missing)} "
        f"{'was' if len(missing) == 1 else 'were'} not run."))
  estimates = measure(criterion.first, criterion.second, results, criterion.statistic)
  if not estimates:
    return Verdict(criterion.name, NOT_RUN,
                   f"{criterion.name}: not judged, {describe(first)} has no probed site.")
  bound = {"at_least" if criterion.direction == AT_LEAST else "at_most": criterion.bound}
  outcome = analysis.judge_any(analysis.judge(estimate, **bound) for estimate in estimates.values())
  favour = max if criterion.direction == AT_LEAST else min
  site = favour(estimates, key=lambda key: estimates[key].mean)
  sentence = criterion.sentence.format(
      first=describe(first), second=describe(second), estimate=estimates[site], site=site,
      per_site="; ".join(f"`{key}` {estimate:+.3f}" for key, estimate in estimates.items()),
      direction=criterion.direction, bound=criterion.bound, verdict=outcome)
  return Verdict(criterion.name, outcome, sentence, estimates[site])


PREREGISTERED = (
    Criterion(
        name="reshaping beats blocking",
        first=best("reshaping", OOD_ACCURACY), second=best("blocking", OOD_ACCURACY),
        direction=AT_LEAST, bound=0.10,
        statement="best reshaping minus best blocking OOD accuracy {symbol} {bound:g}",
        sentence=("Best reshaping arm {first} minus best blocking arm {second}, OOD accuracy: "
                  "{estimate:+.3f} (95% CI over {estimate.n} paired seeds); pre-registered "
                  "{direction} {bound:.2f}: **{verdict}**.")),
    Criterion(
        name="reshaping comes close to the oracle",
        first=arm("oracle", OOD_ACCURACY), second=best("reshaping", OOD_ACCURACY),
        direction=AT_MOST, bound=0.05,
        statement="oracle minus best reshaping {symbol} {bound:g}",
        sentence=("Oracle minus best reshaping arm {second}, OOD accuracy: {estimate:+.3f} (95% CI "
                  "over {estimate.n} paired seeds); pre-registered {direction} {bound:.2f}: "
                  "**{verdict}**.")),
    # "Decodable above chance": held-out probe accuracy at least one point over chance.
    Criterion(
        name="blocked concept stays decodable",
        first=best("blocking", DECODABILITY), second=best("blocking", DECODABILITY_CHANCE),
        direction=AT_LEAST, bound=0.01,
        statement=("the blocked concept decodable above chance (by {direction} {bound:g}) at some "
                   "site after the best blocking arm"),
        sentence=("After the best blocking arm {first}, a fresh linear probe reads the shortcut "
                  "concept above chance at some site (held-out accuracy minus chance, 95% CI: "
                  "{per_site}; highest at `{site}`); pre-registered: decodable above chance (by "
                  "{direction} {bound:.2f}) at some site: **{verdict}**.")),
)


# Added after the exploratory run's results were seen (criterion 3 holds even in the planted null):
# the best block's decodability minus the oracle's, paired by seed, at some site. Pre-registered
# for the confirmatory run only (`CRITERIA`).
OVER_ORACLE = Criterion(
    name="blocked network decodes more than the oracle",
    first=best("blocking", DECODABILITY), second=arm("oracle", DECODABILITY),
    direction=AT_LEAST, bound=0.01,
    statement=("the best block's decodability minus the oracle's (paired by seed) {symbol} "
               "{bound:g} at some site"),
    sentence=("Best blocking arm {first} minus the oracle, decodability (95% CI over paired seeds): "
              "{per_site}; highest at `{site}`; pre-registered {direction} {bound:.2f} at some "
              "site: **{verdict}**."))

# The criteria a run is judged on, by ``config.criteria``: the exploratory run's three, or those
# and `OVER_ORACLE`, fixed before the confirmatory run on fresh seeds.
CRITERIA = {"exploratory": PREREGISTERED, "confirmatory": PREREGISTERED + (OVER_ORACLE,)}


def evaluate_all(results: Sequence[ArmResult],
                 criteria: Sequence[Criterion] = PREREGISTERED) -> list[Verdict]:
  """Every criterion of ``criteria``, judged from one task's results, in order."""
  return [evaluate(criterion, results) for criterion in criteria]
