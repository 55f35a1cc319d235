"""The pre-registered criteria as data, and the one function that judges any of them.

A criterion names the arms it reads (``needs``, each ``(arm, grid point)``; the first grid point
when the point is None), its bounds (``bounds``, the numbers of the issue's sentence) and how it
is judged (``judge``, one of the functions below, reading only the run's own results). Each
interval criterion is judged on its 95% interval over seeds, paired by seed: holds / fails /
inconclusive (`landscape.analysis`). Criterion 1 counts seeds, and holds or fails.

``POST_HOC`` are criteria 2, 3 and 5 judged on the style margin instead of the style rate (declared
post hoc: the first default run saw the rate saturate at 1.0 in every update-space arm, which made
them uninformative). The margin is measured from the base model's (each run's value at step 0), so
zero means "no style acquired", as a rate of 0 does for the pre-registered wording; the bounds are
the pre-registered ones. They are reported beside the pre-registered judgements, never instead.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from landscape import analysis
from landscape.concept_attribution._results import SKILL_ACCURACY
from landscape.concept_attribution._results import STYLE_MARGIN
from landscape.concept_attribution._results import STYLE_RATE
from landscape.concept_attribution._results import ArmResult
from landscape.concept_attribution._results import find
from landscape.sites import BadInputError

NOT_RUN = "not run"


@dataclasses.dataclass(frozen=True)
class Evidence:
  """What a criterion may read: every arm's results, the feature groups' masks (group -> (F,)
  bool) and the skill threshold of criterion 4."""

  results: Sequence[ArmResult]
  masks: Mapping[str, np.ndarray]
  skill_threshold: float


@dataclasses.dataclass(frozen=True)
class Verdict:
  """A criterion judged: HOLDS, FAILS, INCONCLUSIVE or NOT_RUN, its sentence and its numbers."""

  name: str
  outcome: str
  sentence: str
  numbers: dict[str, Any] = dataclasses.field(default_factory=dict)

  def as_dict(self) -> dict[str, Any]:
    return dict(name=self.name, verdict=self.outcome, sentence=self.sentence, numbers=self.numbers)


Judge = Callable[["Criterion", list[ArmResult], Evidence], Verdict]


@dataclasses.dataclass(frozen=True)
class Criterion:
  """One pre-registered criterion.

  name: short, for tables. statement: the criterion in words (may use the bounds by name).
  needs: the (arm, grid point or None) it reads, in the order ``judge`` receives them.
  bounds: its numbers. judge: (criterion, the results of ``needs``, evidence) -> `Verdict`.
  measure: the style measure judged on, where it judges one (see `acquired_style`).
  post_hoc: empty for a pre-registered criterion; else why it was added after seeing data.
  """

  name: str
  statement: str
  needs: tuple[tuple[str, dict[str, float] | None], ...]
  bounds: Mapping[str, float]
  judge: Judge
  measure: str = STYLE_RATE
  post_hoc: str = ""

  def describe(self) -> str:
    return self.statement.format(**self.bounds)


def _within(estimate: analysis.Estimate, low: float, high: float) -> str:
  """HOLDS when the interval lies inside [low, high], FAILS when it lies wholly outside."""
  if estimate.low >= low and estimate.high <= high:
    return analysis.HOLDS
  if estimate.high < low or estimate.low > high:
    return analysis.FAILS
  return analysis.INCONCLUSIVE


def _all_of(outcomes: Sequence[str]) -> str:
  if analysis.FAILS in outcomes:
    return analysis.FAILS
  return analysis.HOLDS if all(outcome == analysis.HOLDS for outcome in outcomes) else \
      analysis.INCONCLUSIVE


MEASURE_NAMES = {STYLE_RATE: "style rate",
                 STYLE_MARGIN: "style margin gained over the base model (nats/token)"}


def acquired_style(result: ArmResult, measure: str) -> np.ndarray:
  """(S,) the style each run ends with on ``measure``: the style rate itself (the pre-registered
  measure), or the margin minus the run's margin at step 0 (the base model's: every arm starts
  there), so that 0 means no style acquired on both."""
  if measure == STYLE_RATE:
    return np.asarray(result.final[STYLE_RATE], np.float64)
  steps, values = result.curves[measure]
  return np.asarray(result.final[measure], np.float64) - values[int(np.argmin(steps))]


def top_features(result: ArmResult, by_step: int, top: int) -> np.ndarray:
  """(S, top) per seed, the features of largest attributed magnitude over the logged steps up to
  ``by_step`` (the root of the summed squared magnitudes), largest first."""
  steps, magnitude = result.attribution["magnitude"]
  upto = steps <= min(by_step, result.steps)
  if not upto.any():
    upto = steps == steps.min()
  summed = np.sum(np.square(magnitude[upto]), axis=0)  # (S, F)
  return np.argsort(-summed, axis=-1, kind="stable")[:, :top]


def judge_style_on_top(criterion: Criterion, needed: list[ArmResult], evidence: Evidence
                       ) -> Verdict:
  (plain,) = needed
  bounds = criterion.bounds
  top = top_features(plain, int(bounds["by_step"]), int(bounds["top"]))
  style_counts = evidence.masks["style"][top].sum(axis=-1)
  seeds_with = int(np.sum(style_counts >= bounds["style_in_top"]))
  required = math.ceil(bounds["seed_fraction"] * len(plain.seeds))
  outcome = analysis.HOLDS if seeds_with >= required else analysis.FAILS
  sentence = (f"{criterion.name}: by step {int(min(bounds['by_step'], plain.steps))}, style "
              f"features among the top {int(bounds['top'])} by attributed update magnitude in "
              f"plain fine-tuning, per seed: {style_counts.tolist()}; {seeds_with} of "
              f"{len(plain.seeds)} seeds have at least {int(bounds['style_in_top'])} (needed: "
              f"{required}): **{outcome}**.")
  return Verdict(criterion.name, outcome, sentence,
                 dict(style_in_top=style_counts.tolist(), seeds_with=seeds_with,
                      required=required))


def judge_suppression(criterion: Criterion, needed: list[ArmResult], evidence: Evidence
                      ) -> Verdict:
  del evidence
  suppress, plain = needed
  bounds = criterion.bounds
  ratio = bounds["style_ratio"]
  suppressed, learned = (acquired_style(suppress, criterion.measure),
                         acquired_style(plain, criterion.measure))
  style = analysis.paired_difference(suppressed, ratio * learned)
  skill = analysis.paired_difference(suppress.final[SKILL_ACCURACY], plain.final[SKILL_ACCURACY])
  outcomes = [analysis.judge(style, at_most=0.0),
              _within(skill, -bounds["skill_tolerance"], bounds["skill_tolerance"])]
  outcome = _all_of(outcomes)
  sentence = (f"{criterion.name}: `{suppress.label}` {MEASURE_NAMES[criterion.measure]} "
              f"{analysis.mean_interval(suppressed):.3f} against plain's "
              f"{analysis.mean_interval(learned):.3f}; suppress minus {ratio:g} x plain, paired: "
              f"{style:+.3f} (pre-registered <= 0: {outcomes[0]}); skill accuracy minus plain's: "
              f"{skill:+.3f} (pre-registered within +-{bounds['skill_tolerance']:g}: "
              f"{outcomes[1]}): **{outcome}**.")
  return Verdict(criterion.name, outcome, sentence,
                 dict(style_minus_bound=dataclasses.asdict(style),
                      skill_difference=dataclasses.asdict(skill)))


def judge_random_control(criterion: Criterion, needed: list[ArmResult], evidence: Evidence
                         ) -> Verdict:
  del evidence
  control, plain = needed
  learned = acquired_style(plain, criterion.measure)
  tolerance = criterion.bounds["relative_change"] * abs(float(np.mean(learned)))
  change = analysis.paired_difference(acquired_style(control, criterion.measure), learned)
  outcome = _within(change, -tolerance, tolerance)
  sentence = (f"{criterion.name}: `{control.label}` minus plain, "
              f"{MEASURE_NAMES[criterion.measure]} (paired): "
              f"{change:+.3f}; pre-registered within +-{criterion.bounds['relative_change']:.0%} "
              f"of plain's mean ({tolerance:.3f}): **{outcome}**.")
  return Verdict(criterion.name, outcome, sentence, dict(change=dataclasses.asdict(change),
                                                         tolerance=tolerance))


def steps_to_threshold(result: ArmResult, threshold: float) -> np.ndarray:
  """(S,) per seed the first evaluated step with skill accuracy >= ``threshold``; runs that never
  reach it count as one evaluation interval past their last step (censored)."""
  steps, values = result.curves[SKILL_ACCURACY]
  interval = int(steps[1] - steps[0]) if len(steps) > 1 else result.steps
  reached = values >= threshold
  first = np.where(reached.any(axis=0), steps[np.argmax(reached, axis=0)],
                   steps[-1] + interval)
  return first.astype(np.float64)


def judge_amplification(criterion: Criterion, needed: list[ArmResult], evidence: Evidence
                        ) -> Verdict:
  amplify, plain = needed
  threshold = evidence.skill_threshold
  plain_steps = steps_to_threshold(plain, threshold)
  amplify_steps = steps_to_threshold(amplify, threshold)
  saved = analysis.paired_difference(plain_steps, amplify_steps)
  outcome = analysis.judge(saved, at_least=criterion.bounds["steps_saved"])
  sentence = (f"{criterion.name}: steps to skill accuracy {threshold:g} (first evaluation at or "
              f"above it; never reached counts as one interval past the end), plain "
              f"{plain_steps.tolist()} vs `{amplify.label}` {amplify_steps.tolist()}; plain minus "
              f"amplify, paired: {saved:+.1f}; pre-registered at least "
              f"{criterion.bounds['steps_saved']:g}: **{outcome}**.")
  return Verdict(criterion.name, outcome, sentence,
                 dict(threshold=threshold, plain_steps=plain_steps.tolist(),
                      amplify_steps=amplify_steps.tolist(), saved=dataclasses.asdict(saved)))


def judge_long_run(criterion: Criterion, needed: list[ArmResult], evidence: Evidence) -> Verdict:
  """Holds when the long run keeps the share of the effect; an effect that is not there over the
  short run (its interval not above zero) cannot be kept: inconclusive, said so."""
  del evidence
  suppress, plain, suppress_long, plain_long = needed
  kept = criterion.bounds["kept_fraction"]
  measure = criterion.measure
  effect = acquired_style(plain, measure) - acquired_style(suppress, measure)
  effect_long = acquired_style(plain_long, measure) - acquired_style(suppress_long, measure)
  margin = analysis.paired_difference(effect_long, kept * effect)
  short = analysis.mean_interval(effect)
  outcome = analysis.judge(margin, at_least=0.0)
  caveat = ""
  if short.low <= 0:
    outcome = analysis.INCONCLUSIVE
    caveat = " (suppression has no effect over the short run to keep, so nothing is judged)"
  sentence = (f"{criterion.name}: suppression's effect on the {MEASURE_NAMES[measure]} (plain "
              f"minus suppress) "
              f"{short:.3f} over {suppress.steps} steps, "
              f"{analysis.mean_interval(effect_long):.3f} over {suppress_long.steps}; long effect "
              f"minus {kept:g} x short, paired: {margin:+.3f}; pre-registered >= 0 with an effect "
              f"over the short run{caveat}: **{outcome}**.")
  return Verdict(criterion.name, outcome, sentence, dict(margin=dataclasses.asdict(margin),
                                                         short_effect=dataclasses.asdict(short)))


PREREGISTERED = (
    Criterion(
        name="1. style features lead the attribution",
        statement=("by step {by_step:g}, style features fill at least {style_in_top:g} of the top "
                   "{top:g} features by attributed update magnitude in at least "
                   "{seed_fraction:.0%} of the seeds of plain fine-tuning"),
        needs=(("plain", None),),
        bounds=dict(by_step=50, top=5, style_in_top=3, seed_fraction=0.8),
        judge=judge_style_on_top),
    Criterion(
        name="2. suppression halves the style, keeps the skill",
        statement=("suppress (gain 0) style rate <= {style_ratio:g} x plain's (paired) and skill "
                   "accuracy within +-{skill_tolerance:g} of plain's"),
        needs=(("suppress", {"style_gain": 0.0}), ("plain", None)),
        bounds=dict(style_ratio=0.5, skill_tolerance=0.02),
        judge=judge_suppression),
    Criterion(
        name="3. random features change little",
        statement=("the random-feature control (gain 0) changes the style rate by less than "
                   "{relative_change:.0%} of plain's"),
        needs=(("random_features", {"style_gain": 0.0}), ("plain", None)),
        bounds=dict(relative_change=0.10),
        judge=judge_random_control),
    Criterion(
        name="4. amplification learns the skill sooner",
        statement=("amplify reaches the skill threshold (config.skill_threshold) at least "
                   "{steps_saved:g} step(s) before plain fine-tuning (paired)"),
        needs=(("amplify", None), ("plain", None)),
        bounds=dict(steps_saved=1),
        judge=judge_amplification),
    Criterion(
        name="5. suppression holds over a 5x longer run",
        statement=("over the long run, suppression keeps at least {kept_fraction:.0%} of its "
                   "effect on the style rate (paired)"),
        needs=(("suppress", {"style_gain": 0.0}), ("plain", None), ("suppress_long", None),
               ("plain_long", None)),
        bounds=dict(kept_fraction=0.5),
        judge=judge_long_run),
)


_MARGIN_REASON = ("added after the first default run, in which the style rate saturated at 1.0 in "
                  "every update-space arm")


def _on_margin(criterion: Criterion) -> Criterion:
  number = criterion.name.split(".")[0]
  return dataclasses.replace(
      criterion, name=f"{number}m. {criterion.name.split('. ', 1)[1]}, on the margin",
      statement=criterion.statement.replace("style rate", "style margin gained over the base"),
      measure=STYLE_MARGIN, post_hoc=_MARGIN_REASON)


POST_HOC = tuple(_on_margin(criterion) for criterion in PREREGISTERED
                 if criterion.judge in (judge_suppression, judge_random_control, judge_long_run))


def evaluate(criterion: Criterion, evidence: Evidence) -> Verdict:
  """Judges ``criterion`` from the run's results; NOT_RUN when an arm it reads is absent."""
  needed = [find(evidence.results, arm, point) for arm, point in criterion.needs]
  missing = [arm for (arm, _), result in zip(criterion.needs, needed) if result is None]
  if missing:
    return Verdict(criterion.name, NOT_RUN,
                   f"{criterion.name}: not judged, {', '.join(missing)} not run.")
  seeds = {tuple(result.seeds) for result in needed}
  if len(seeds) > 1:
    raise BadInputError(f"{criterion.name}: arms trained with different seeds {sorted(seeds)}; "
                        "they cannot be paired")
  return criterion.judge(criterion, needed, evidence)


def evaluate_all(evidence: Evidence, criteria: Sequence[Criterion] = PREREGISTERED
                 ) -> list[Verdict]:
  """Every criterion of ``criteria`` judged (the pre-registered ones by default; `POST_HOC`
  separately)."""
  return [evaluate(criterion, evidence) for criterion in criteria]
