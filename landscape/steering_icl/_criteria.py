"""The pre-registered criteria as data, and the one function that judges any of them.

A criterion names a measured quantity (a key of the run's measurements, each an `analysis.Estimate`
with its interval and a few words on where it was measured), a direction and a bound. `evaluate`
judges it on the interval (`analysis.judge`): holds when the whole interval passes, fails when the
whole interval fails, inconclusive otherwise; a quantity the run could not measure is "not run",
with the reason. The sentence is formatted from the run's own numbers.

The six criteria are issue 15's, fixed before the default preset was first run. Changed in review
after that run, with the reason: criterion 5 first compared |a| of the random direction fitted to
the grid averaged over seeds, but each seed has its own random direction, so their effects cancel in
the average whatever each does (the first run: 0.001, while single seeds' random directions moved
the log-odds by up to 0.8 of the difference of means); it now compares the root mean square over
seeds of each seed's fitted a. Criterion 3's fraction gained a bootstrap interval (it had none).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

from landscape import analysis
from landscape.sites import BadInputError

AT_LEAST, AT_MOST = "at least", "at most"
_SYMBOLS = {AT_LEAST: ">=", AT_MOST: "<="}
NOT_RUN = "not run"

# The measured quantities the criteria read (measured by _report.judge).
LOMO_R2 = "leave_one_magnitude_out_r2"
INTERACTION_GAIN = "interaction_r2_gain"
CROSSING_AGREEMENT = "crossing_agreement"
EVIDENCE_CORRELATION = "evidence_correlation"
RANDOM_A_RATIO = "random_a_ratio"
SHOT_VECTOR_MISS = "shot_vector_miss"


@dataclasses.dataclass(frozen=True)
class Measurement:
  """A measured quantity: its estimate, or None with ``detail`` saying why it could not be measured.

  detail: where and how it was measured ("at `blocks.1.resid_post`, difference of means"), in words
  that fit into the criterion's sentence.
  """

  estimate: analysis.Estimate | None
  detail: str


@dataclasses.dataclass(frozen=True)
class Criterion:
  """``quantity`` is ``direction`` (AT_LEAST or AT_MOST) ``bound``.

  statement: the criterion in a few words; may use {symbol} and {bound}.
  sentence: the verdict; may use {estimate} (an `analysis.Estimate`), {detail}, {direction},
    {bound} and {verdict}.
  """

  name: str
  quantity: str
  direction: str
  bound: float
  statement: str
  sentence: str

  def __post_init__(self):
    if self.direction not in _SYMBOLS:
      raise BadInputError(f"Criterion {self.name!r}: direction={self.direction!r}; expected "
                          f"{AT_LEAST!r} or {AT_MOST!r}")

  def describe(self) -> str:
    return self.statement.format(symbol=_SYMBOLS[self.direction], bound=self.bound)


@dataclasses.dataclass(frozen=True)
class Verdict:
  name: str
  outcome: str
  sentence: str
  estimate: analysis.Estimate | None = None

  def as_dict(self) -> dict[str, Any]:
    estimate = None if self.estimate is None else dataclasses.asdict(self.estimate)
    return dict(name=self.name, verdict=self.outcome, sentence=self.sentence, estimate=estimate)


def evaluate(criterion: Criterion, measurements: Mapping[str, Measurement]) -> Verdict:
  """Judges ``criterion`` from the run's measurements: the outcome and its sentence."""
  measured = measurements.get(criterion.quantity)
  if measured is None or measured.estimate is None:
    why = measured.detail if measured is not None else f"the run has no {criterion.quantity!r}"
    return Verdict(criterion.name, NOT_RUN, f"{criterion.name}: not judged, {why}.")
  bound = {"at_least" if criterion.direction == AT_LEAST else "at_most": criterion.bound}
  outcome = analysis.judge(measured.estimate, **bound)
  sentence = criterion.sentence.format(estimate=measured.estimate, detail=measured.detail,
                                       direction=criterion.direction, bound=criterion.bound,
                                       verdict=outcome)
  return Verdict(criterion.name, outcome, sentence, measured.estimate)


PREREGISTERED = (
    Criterion(
        name="the formula predicts held-out magnitudes",
        quantity=LOMO_R2, direction=AT_LEAST, bound=0.90,
        statement="leave-one-magnitude-out R^2 at the best site {symbol} {bound:g}",
        sentence=("Leave-one-magnitude-out R^2 of the fitted log-odds {detail}: {estimate:.3f} "
                  "(95% bootstrap interval over seeds and prompt groups); pre-registered {direction} {bound:.2f}: "
                  "**{verdict}**.")),
    Criterion(
        name="steering and shots add",
        quantity=INTERACTION_GAIN, direction=AT_MOST, bound=0.02,
        statement="R^2 gained by an m x N interaction term {symbol} {bound:g}",
        sentence=("Adding an m x N^(1-alpha) interaction term {detail} raises R^2 by "
                  "{estimate:.4f}; pre-registered {direction} {bound:.2f}: **{verdict}**.")),
    Criterion(
        name="the flip boundary is where the formula puts it",
        quantity=CROSSING_AGREEMENT, direction=AT_LEAST, bound=0.70,
        statement="fraction of magnitudes whose measured 50% crossing is within one shot of N*(m) "
                  "{symbol} {bound:g}",
        sentence=("Measured 50% crossings within one shot of the fitted N*(m) {detail}: a fraction "
                  "{estimate:.2f} (95% bootstrap interval); pre-registered {direction} {bound:.2f}: "
                  "**{verdict}**.")),
    Criterion(
        name="the evidence term tracks Bayesian evidence",
        quantity=EVIDENCE_CORRELATION, direction=AT_LEAST, bound=0.90,
        statement="correlation of gamma N^(1-alpha) with the exact Bayesian log-likelihood ratio of "
                  "the shots {symbol} {bound:g}",
        sentence=("Correlation over N of the fitted evidence term with the exact Bayesian "
                  "log-likelihood ratio of the shots {detail}: {estimate:.3f} (95% bootstrap "
                  "interval); pre-registered {direction} {bound:.2f}: **{verdict}**.")),
    Criterion(
        name="a random direction does not steer",
        quantity=RANDOM_A_RATIO, direction=AT_MOST, bound=0.10,
        statement="|a| of a random direction of equal norm over |a| of the difference of means, "
                  "root mean square over seeds, {symbol} {bound:g}",
        sentence=("The random direction's fitted |a| over the difference of means' {detail}: "
                  "{estimate:.3f} (95% bootstrap interval); pre-registered {direction} "
                  "{bound:.2f}: **{verdict}**.")),
    Criterion(
        name="a vector built from shots acts like the shots",
        quantity=SHOT_VECTOR_MISS, direction=AT_MOST, bound=0.0,
        statement="distance of the shot vector's log-odds from the fit's 95% interval at N shots "
                  "{symbol} {bound:g}",
        sentence=("The steering vector built from shots, applied without shots {detail}, lands "
                  "{estimate.mean:.3f} log-odds outside the fit's 95% interval at those shots (0 "
                  "when inside); pre-registered {direction} {bound:g}: **{verdict}**.")),
)

CRITERIA = {"preregistered": PREREGISTERED}


def evaluate_all(measurements: Mapping[str, Measurement],
                 criteria: Sequence[Criterion] = PREREGISTERED) -> list[Verdict]:
  return [evaluate(criterion, measurements) for criterion in criteria]
