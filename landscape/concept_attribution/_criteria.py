"""The pre-registered criteria as data, and the one function that judges any of them.

A criterion names the arms it reads (``needs``, each ``(arm, grid point)``; the first grid point
when the point is None), its bounds (``bounds``, a typed record of the numbers of the issue's
sentence) and how it is judged (``judge``, one of the functions below, reading only the run's own
results). Each interval criterion is judged on its 95% interval over seeds, paired by seed:
holds / fails / inconclusive (`landscape.analysis`). Criterion 1 counts seeds, and holds or fails.
Every number in a statement or a sentence comes from the bounds, the evidence (the skill
threshold, the long run's factor) or the results.

``POST_HOC`` are criteria 2, 3 and 5 judged on the style margin instead of the style rate (declared
post hoc: the first default run saw the rate saturate at 1.0 in every update-space arm, which made
them uninformative). The margin is measured from the base model's (each run's value at step 0), so
zero means "no style acquired", as a rate of 0 does for the pre-registered wording; the bounds are
the pre-registered ones. They are reported beside the pre-registered judgements, never instead.

``DECLARED`` are checks added in review (not pre-registered): criterion 1 asked of the attribution
over every writer of the residual stream (the pre-registered one reads the writers of the SAE's
site, as the first runs did), and the span-share check: the style group's span share of plain
fine-tuning's update above the null level (random groups matched on activation to the style
group) and above the oracle's style share (the same examples without the style).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from landscape import analysis
from landscape.concept_attribution._results import SKILL_ACCURACY
from landscape.concept_attribution._results import STYLE_MARGIN
from landscape.concept_attribution._results import STYLE_RATE
from landscape.concept_attribution._results import ArmResult
from landscape.concept_attribution._results import find
from landscape.concept_attribution._measures import SpanShares
from landscape.concept_attribution._measures import group_span_shares
from landscape.concept_attribution._setting import GroupMasks
from landscape.sites import BadInputError

NOT_RUN = "not run"


@dataclasses.dataclass(frozen=True)
class Evidence:
  """What a criterion may read: every arm's results, the feature groups' masks, the skill
  threshold of criterion 4 (``config.skill_threshold``) and how many times longer the long arms
  ran (``config.long_factor``)."""

  results: Sequence[ArmResult]
  masks: GroupMasks
  skill_threshold: float
  long_factor: int


@dataclasses.dataclass(frozen=True)
class TopFeatureBounds:
  """Criterion 1: by step ``by_step``, at least ``style_in_top`` style features among the ``top``
  by attributed magnitude, in at least ``seed_fraction`` of the seeds."""

  by_step: int
  top: int
  style_in_top: int
  seed_fraction: float


@dataclasses.dataclass(frozen=True)
class SuppressionBounds:
  """Criterion 2: style at most ``style_ratio`` times plain's, skill within ``skill_tolerance``."""

  style_ratio: float
  skill_tolerance: float


@dataclasses.dataclass(frozen=True)
class ControlBounds:
  """Criterion 3: the style changes by less than ``relative_change`` of plain's."""

  relative_change: float


@dataclasses.dataclass(frozen=True)
class AmplificationBounds:
  """Criterion 4: the skill threshold reached at least ``steps_saved`` steps sooner."""

  steps_saved: float


@dataclasses.dataclass(frozen=True)
class LongRunBounds:
  """Criterion 5: at least ``kept_fraction`` of suppression's effect kept over the long run."""

  kept_fraction: float


@dataclasses.dataclass(frozen=True)
class SpanShareBounds:
  """The declared span-share check: plain's style span share minus the null level, and minus the
  oracle's style share, each with its 95% interval's lower end at least ``above``."""

  above: float


Bounds = (TopFeatureBounds | SuppressionBounds | ControlBounds | AmplificationBounds
          | LongRunBounds | SpanShareBounds)


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

  name: short, for tables. statement: the criterion in words; it may name the bounds' fields,
    ``skill_threshold`` and ``long_factor`` (the evidence's) and the hyper-parameters of the grid
    points in ``needs`` (``style_gain``).
  needs: the (arm, grid point or None) it reads, in the order ``judge`` receives them.
  bounds: its numbers. judge: (criterion, the results of ``needs``, evidence) -> `Verdict`.
  measure: the style measure judged on, where it judges one (see `acquired_style`); for criterion
    1, the attribution magnitude it ranks (``SITE_WRITER_MAGNITUDE`` or ``STREAM_MAGNITUDE``).
  post_hoc: empty for a pre-registered criterion; else why it was added after seeing data.
  """

  name: str
  statement: str
  needs: tuple[tuple[str, dict[str, float] | None], ...]
  bounds: Bounds
  judge: Judge
  measure: str = STYLE_RATE
  post_hoc: str = ""

  def describe(self, evidence: Evidence) -> str:
    """The statement with the bounds', the evidence's and the needed points' numbers put in.

    Raises:
      BadInputError: two needed points give one hyper-parameter different values.
    """
    points = {}
    for _, point in self.needs:
      for name, value in (point or {}).items():
        if name in points and points[name] != value:
          raise BadInputError(f"{self.name}: needs {name}={points[name]} and {name}={value}; "
                              "the statement cannot name both")
        points[name] = value
    return self.statement.format(**points, **dataclasses.asdict(self.bounds),
                                 skill_threshold=evidence.skill_threshold,
                                 long_factor=evidence.long_factor)


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


SITE_WRITER_MAGNITUDE = "site_writer_magnitude"  # over the writers of the SAE's site
STREAM_MAGNITUDE = "magnitude"                    # over every writer of the coverage
MAGNITUDE_NAMES = {SITE_WRITER_MAGNITUDE: "the writers of the SAE's site",
                   STREAM_MAGNITUDE: "every writer of the residual stream"}


def top_features(result: ArmResult, by_step: int, top: int,
                 magnitude_name: str = SITE_WRITER_MAGNITUDE) -> np.ndarray:
  """(S, top) per seed, the features of largest attributed magnitude (``magnitude_name``, a logged
  attribution) over the logged steps up to ``by_step`` (the root of the summed squared
  magnitudes), largest first."""
  steps, magnitude = result.attribution[magnitude_name]
  upto = steps <= min(by_step, result.steps)
  if not upto.any():
    upto = steps == steps.min()
  summed = np.sum(np.square(magnitude[upto]), axis=0)  # (S, F)
  return np.argsort(-summed, axis=-1, kind="stable")[:, :top]


def judge_style_on_top(criterion: Criterion, needed: list[ArmResult], evidence: Evidence
                       ) -> Verdict:
  (plain,) = needed
  bounds = criterion.bounds
  top = top_features(plain, bounds.by_step, bounds.top, criterion.measure)
  style_counts = evidence.masks.style[top].sum(axis=-1)
  seeds_with = int(np.sum(style_counts >= bounds.style_in_top))
  required = math.ceil(bounds.seed_fraction * len(plain.seeds))
  outcome = analysis.HOLDS if seeds_with >= required else analysis.FAILS
  sentence = (f"{criterion.name}: by step {min(bounds.by_step, plain.steps)}, style "
              f"features among the top {bounds.top} by attributed update magnitude (over "
              f"{MAGNITUDE_NAMES[criterion.measure]}) in "
              f"plain fine-tuning, per seed: {style_counts.tolist()}; {seeds_with} of "
              f"{len(plain.seeds)} seeds have at least {bounds.style_in_top} (needed: "
              f"{required}): **{outcome}**.")
  return Verdict(criterion.name, outcome, sentence,
                 dict(style_in_top=style_counts.tolist(), seeds_with=seeds_with,
                      required=required))


def judge_suppression(criterion: Criterion, needed: list[ArmResult], evidence: Evidence
                      ) -> Verdict:
  del evidence
  suppress, plain = needed
  bounds = criterion.bounds
  ratio = bounds.style_ratio
  suppressed, learned = (acquired_style(suppress, criterion.measure),
                         acquired_style(plain, criterion.measure))
  style = analysis.paired_difference(suppressed, ratio * learned)
  skill = analysis.paired_difference(suppress.final[SKILL_ACCURACY], plain.final[SKILL_ACCURACY])
  outcomes = [analysis.judge(style, at_most=0.0),
              _within(skill, -bounds.skill_tolerance, bounds.skill_tolerance)]
  outcome = _all_of(outcomes)
  sentence = (f"{criterion.name}: `{suppress.label}` {MEASURE_NAMES[criterion.measure]} "
              f"{analysis.mean_interval(suppressed):.3f} against plain's "
              f"{analysis.mean_interval(learned):.3f}; suppress minus {ratio:g} x plain, paired: "
              f"{style:+.3f} (pre-registered <= 0: {outcomes[0]}); skill accuracy minus plain's: "
              f"{skill:+.3f} (pre-registered within +-{bounds.skill_tolerance:g}: "
              f"{outcomes[1]}): **{outcome}**.")
  return Verdict(criterion.name, outcome, sentence,
                 dict(style_minus_bound=dataclasses.asdict(style),
                      skill_difference=dataclasses.asdict(skill)))


def judge_random_control(criterion: Criterion, needed: list[ArmResult], evidence: Evidence
                         ) -> Verdict:
  del evidence
  control, plain = needed
  learned = acquired_style(plain, criterion.measure)
  tolerance = criterion.bounds.relative_change * abs(float(np.mean(learned)))
  change = analysis.paired_difference(acquired_style(control, criterion.measure), learned)
  outcome = _within(change, -tolerance, tolerance)
  sentence = (f"{criterion.name}: `{control.label}` minus plain, "
              f"{MEASURE_NAMES[criterion.measure]} (paired): "
              f"{change:+.3f}; pre-registered within +-{criterion.bounds.relative_change:.0%} "
              f"of plain's mean ({tolerance:.3f}): **{outcome}**.")
  return Verdict(criterion.name, outcome, sentence, dict(change=dataclasses.asdict(change),
                                                         tolerance=tolerance))


def steps_to_threshold(result: ArmResult, threshold: float, *,
                       censored_at: float | None = None) -> np.ndarray:
  """(S,) per seed the first evaluated step with skill accuracy >= ``threshold``; runs that never
  reach it (censored) count as ``censored_at``, by default one evaluation interval past their
  last step (``np.inf``: never)."""
  steps, values = result.curves[SKILL_ACCURACY]
  interval = int(steps[1] - steps[0]) if len(steps) > 1 else result.steps
  reached = values >= threshold
  never = steps[-1] + interval if censored_at is None else censored_at
  first = np.where(reached.any(axis=0), steps[np.argmax(reached, axis=0)], never)
  return first.astype(np.float64)


def judge_amplification(criterion: Criterion, needed: list[ArmResult], evidence: Evidence
                        ) -> Verdict:
  """Holds when amplify reaches the threshold sooner by the bound (paired), judged on both
  imputations of a censored run (one interval past the end, and never): a verdict on which they
  disagree is inconclusive, said so. Never reached by both arms in one seed leaves that seed's
  difference unknown under the second imputation (inf - inf): inconclusive too."""
  amplify, plain = needed
  threshold = evidence.skill_threshold
  plain_steps = steps_to_threshold(plain, threshold)
  amplify_steps = steps_to_threshold(amplify, threshold)
  both_censored = int(np.sum((plain_steps > plain.steps) & (amplify_steps > amplify.steps)))
  saved = analysis.paired_difference(plain_steps, amplify_steps)
  outcome = analysis.judge(saved, at_least=criterion.bounds.steps_saved)
  never_plain = steps_to_threshold(plain, threshold, censored_at=np.inf)
  never_amplify = steps_to_threshold(amplify, threshold, censored_at=np.inf)
  one_censored = bool(np.any(np.isinf(never_plain) | np.isinf(never_amplify)))
  caveat = ""
  if both_censored:
    outcome = analysis.INCONCLUSIVE
    caveat = (f" (in {both_censored} of {len(plain_steps)} seeds neither arm reaches the "
              "threshold, so their difference is unknown and nothing is judged)")
  elif one_censored:
    # With "never", a censored seed's difference is +inf (plain censored) or -inf (amplify): the
    # mean is then infinite. Mixed signs: undefined; -inf: amplify is not sooner on average (fails);
    # +inf: holds only when every finite difference meets the bound (else the interval is
    # unbounded: inconclusive).
    difference = never_plain - never_amplify
    finite = difference[np.isfinite(difference)]
    if np.any(np.isposinf(difference)) and np.any(np.isneginf(difference)):
      other = analysis.INCONCLUSIVE
    elif np.any(np.isneginf(difference)):
      other = analysis.FAILS
    elif np.all(finite >= criterion.bounds.steps_saved):
      other = analysis.HOLDS
    else:
      other = analysis.INCONCLUSIVE
    if other != outcome:
      caveat = (f" (censored runs counted as never reaching it give {other}: the two imputations "
                "disagree, so nothing is judged)")
      outcome = analysis.INCONCLUSIVE
  sentence = (f"{criterion.name}: steps to skill accuracy {threshold:g} (first evaluation at or "
              f"above it; never reached counts as one interval past the end), plain "
              f"{plain_steps.tolist()} vs `{amplify.label}` {amplify_steps.tolist()}; plain minus "
              f"amplify, paired: {saved:+.1f}; pre-registered at least "
              f"{criterion.bounds.steps_saved:g}{caveat}: **{outcome}**.")
  return Verdict(criterion.name, outcome, sentence,
                 dict(threshold=threshold, plain_steps=plain_steps.tolist(),
                      amplify_steps=amplify_steps.tolist(), saved=dataclasses.asdict(saved),
                      both_censored=both_censored))


def judge_long_run(criterion: Criterion, needed: list[ArmResult], evidence: Evidence) -> Verdict:
  """Holds when the long run keeps the share of the effect; an effect that is not there over the
  short run (its interval not above zero) cannot be kept: inconclusive, said so."""
  del evidence
  suppress, plain, suppress_long, plain_long = needed
  kept = criterion.bounds.kept_fraction
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


def mean_span_shares(result: ArmResult) -> SpanShares:
  """The `SpanShares` of ``result``'s update, each (S,), averaged over the logged steps."""
  _, share = result.attribution["span_share"]  # (L, S, G + K)
  return SpanShares(*(values.mean(axis=0) for values in group_span_shares(share)))


def judge_span_share(criterion: Criterion, needed: list[ArmResult], evidence: Evidence
                     ) -> Verdict:
  """Holds when the 95% intervals of plain's style span share minus the null level (the mean span
  share of the null groups, random groups matched on activation to the style group) and minus the
  oracle's style share (the same base model, seeds and examples without the style), each paired by
  seed, have their lower ends at or above the bound; fails when either lies wholly below it."""
  del evidence
  plain, oracle = needed
  above = criterion.bounds.above
  shares, reference = mean_span_shares(plain), mean_span_shares(oracle)
  over_null = analysis.paired_difference(shares.style, shares.null)
  over_oracle = analysis.paired_difference(shares.style, reference.style)
  outcomes = [analysis.judge(over_null, at_least=above),
              analysis.judge(over_oracle, at_least=above)]
  outcome = _all_of(outcomes)
  sentence = (f"{criterion.name}: plain's span shares, style "
              f"{analysis.mean_interval(shares.style):.4f}, null level "
              f"{analysis.mean_interval(shares.null):.4f} (random control group "
              f"{analysis.mean_interval(shares.random):.4f}); the oracle's style share "
              f"{analysis.mean_interval(reference.style):.4f}, its null level "
              f"{analysis.mean_interval(reference.null):.4f}. Style minus null level, paired: "
              f"{over_null:+.4f} ({outcomes[0]}); plain's style minus the oracle's: "
              f"{over_oracle:+.4f} ({outcomes[1]}); declared: both intervals' lower ends >= "
              f"{above:g}: **{outcome}**.")
  return Verdict(criterion.name, outcome, sentence,
                 dict(over_null=dataclasses.asdict(over_null),
                      over_oracle=dataclasses.asdict(over_oracle)))


PREREGISTERED = (
    Criterion(
        name="1. style features lead the attribution",
        statement=("by step {by_step:g}, style features fill at least {style_in_top:g} of the top "
                   "{top:g} features by attributed update magnitude in at least "
                   "{seed_fraction:.0%} of the seeds of plain fine-tuning"),
        needs=(("plain", None),),
        bounds=TopFeatureBounds(by_step=50, top=5, style_in_top=3, seed_fraction=0.8),
        judge=judge_style_on_top, measure=SITE_WRITER_MAGNITUDE),
    Criterion(
        name="2. suppression halves the style, keeps the skill",
        statement=("suppress (style gain {style_gain:g}) style rate <= {style_ratio:g} x plain's "
                   "(paired) and skill accuracy within +-{skill_tolerance:g} of plain's"),
        needs=(("suppress", {"style_gain": 0.0}), ("plain", None)),
        bounds=SuppressionBounds(style_ratio=0.5, skill_tolerance=0.02),
        judge=judge_suppression),
    Criterion(
        name="3. random features change little",
        statement=("the random-feature control (style gain {style_gain:g}) changes the style "
                   "rate by less than {relative_change:.0%} of plain's"),
        needs=(("random_features", {"style_gain": 0.0}), ("plain", None)),
        bounds=ControlBounds(relative_change=0.10),
        judge=judge_random_control),
    Criterion(
        name="4. amplification learns the skill sooner",
        statement=("amplify reaches skill accuracy {skill_threshold:g} at least "
                   "{steps_saved:g} step(s) before plain fine-tuning (paired)"),
        needs=(("amplify", None), ("plain", None)),
        bounds=AmplificationBounds(steps_saved=1),
        judge=judge_amplification),
    Criterion(
        name="5. suppression holds over a longer run",
        statement=("over a run {long_factor:g}x longer, suppression keeps at least "
                   "{kept_fraction:.0%} of its effect on the style rate (paired)"),
        needs=(("suppress", {"style_gain": 0.0}), ("plain", None), ("suppress_long", None),
               ("plain_long", None)),
        bounds=LongRunBounds(kept_fraction=0.5),
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


DECLARED = (
    dataclasses.replace(
        PREREGISTERED[0], name="1w. style features lead the attribution over the stream's writers",
        statement=PREREGISTERED[0].statement.replace(
            "attributed update magnitude", "attributed update magnitude over every writer of the "
            "residual stream"),
        measure=STREAM_MAGNITUDE,
        post_hoc=("added in the third run, partly after seeing the second run's results: the "
                  "attribution was widened from the site's writers to the stream's (embeddings "
                  "included), where the new tokens are learned")),
    Criterion(
        name="S. the style's span share stands out",
        statement=("plain fine-tuning's style span share minus the null level (the mean over "
                   "random groups matched on activation to the style group), and minus the "
                   "oracle's style share, each have a paired confidence interval (the report's) "
                   "whose lower end is at least {above:g}"),
        needs=(("plain", None), ("oracle", None)),
        bounds=SpanShareBounds(above=0.0),
        judge=judge_span_share,
        post_hoc=("added in review: the first runs' group shares (sums of single-row shares) did "
                  "not separate the style from random features; null groups matched on "
                  "activation since the fourth run")),
)


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
  """Every criterion of ``criteria`` judged (the pre-registered ones by default; `POST_HOC` and
  `DECLARED` separately)."""
  return [evaluate(criterion, evidence) for criterion in criteria]
