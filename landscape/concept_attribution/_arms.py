"""The arms, as data, and the jobs that train them: one `training.train` call (one compiled
program) per job, every arm of the job a set of points of its grid of hyper-parameters.

Every arm warm-starts from the base model, fine-tunes with Adam and ends its optimizer chain with
`transforms.attribute` over every SAE feature and the span shares of the feature sets (so the
attribution is of the update the arm applies). Gains on SAE features act through
`transforms.scale_along` over the span of the chosen features' decoder rows, on the parameters of
``config.coverage`` with the roles of ``config.roles`` (`_setting.coverage_links`; by default every
writer and every reader of the residual stream: the embeddings, every block's attention and MLP
input and output matrices, the tied unembedding; on a reader, which reads LayerNorm's output, the
span scaled is the stream's own, not mapped through LayerNorm's gamma and centring: exact for
writers, approximate for readers). The spans are data, not constants of the
program: every run holds the spans of all the feature sets (`FeatureSpans`, a refreshed value that
never changes) and picks one per gain by an integer hyper-parameter, its gain a float one. So
``plain`` (gains 1), ``suppress``, ``amplify``, ``suppress_amplify`` and both controls are points
of one job's grid, trained in one program; ``plain_long`` and ``suppress_long`` another;
``plain_live`` and ``suppress_live`` (the span of the live SAE's current style rows) a third.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np
import optax

from landscape import data
from landscape import objectives
from landscape import sae as sae_lib
from landscape import training
from landscape import transforms
from landscape.concept_attribution._measures import LIVE_SAE
from landscape.concept_attribution._measures import LIVE_SHARE_BASES
from landscape.concept_attribution._measures import LIVE_SPAN
from landscape.concept_attribution._measures import ROWS_ARG
from landscape.concept_attribution._measures import attribution_directions
from landscape.concept_attribution._measures import code_change_attribution
from landscape.concept_attribution._measures import feature_spans
from landscape.concept_attribution._measures import live_share_bases
from landscape.concept_attribution._measures import span_share_attribution
from landscape.concept_attribution._setting import FEATURE_SETS
from landscape.concept_attribution._setting import Setting
from landscape.concept_attribution._setting import coverage_links
from landscape.training import ConfigError

Grid = list[dict[str, float]]
ARM_HPARAM = "arm"            # every job's grid: the index in ARMS of the arm a run belongs to
SPANS = "feature_spans"       # the refreshed `FeatureSpans`
LIVE_STYLE_SPAN = "style_live_span"  # the live SAE's style span (refresher and extra arg)
# The two gains of the gain jobs, applied in this order: the style's last, so that a style gain
# of 0 leaves nothing in the style span even where the skill span overlaps it.
GAIN_SLOTS = ("skill", "style")


@dataclasses.dataclass
class ArmPlan:
  """Everything `training.train` needs for one job."""

  dataset: data.Dataset
  objective: objectives.Objective
  optimizer: optax.GradientTransformationExtraArgs
  refreshers: tuple[Any, ...] = ()
  optimizer_extra_args: Callable[[training.TrainState], Mapping[str, Any]] | None = None


@dataclasses.dataclass(frozen=True)
class Job:
  """One training call: ``build`` (setting, config) -> its plan; its steps are ``steps_factor``
  times ``config.steps``. Its directory is ``arms/{name}``."""

  name: str
  build: Callable[[Setting, ml_collections.ConfigDict], ArmPlan]
  steps_factor: Callable[[ml_collections.ConfigDict], int] = lambda config: 1


@dataclasses.dataclass(frozen=True)
class Arm:
  """One arm, as data.

  name: its rows in the report. family: "baseline", "update" (gains on the update's components
  along SAE features), "control" (the same gains on other features), "activation" (interventions
  on the site's activation in training) or "reshaping" (a loss term). job: the `Job` it trains
  in. grid: config -> its own points (what the report labels it by; every point trained with
  every seed). program_point: one of its points -> the job's hyper-parameters for it (the arm's
  index under ``ARM_HPARAM`` is added by `job_grid`).
  """

  name: str
  family: str
  job: str
  grid: Callable[[ml_collections.ConfigDict], Grid] = lambda config: [{}]
  program_point: Callable[[dict[str, float]], dict[str, float]] = dict
  description: str = ""


def scale_along_by(directions: transforms.Directions, gain_arg: str
                   ) -> optax.GradientTransformationExtraArgs:
  """`transforms.scale_along` whose (scalar) gain arrives each step as the extra arg ``gain_arg``
  (a run's hyper-parameter, so runs with different gains share one program); with directions
  built with an ``extra_arg``, their span bases arrive through it too.

  The same arithmetic as ``scale_along(directions, gain)``: at gain 1 each value comes back
  unchanged (u + 0; a -0.0 entry comes back +0.0), at gain 0 the result is `project_out`'s. Each
  selected feature's decoder row d_k lies in the span, so its projection U d_k is multiplied by
  exactly the gain: the attribution after it sees the group scaled by |gain|.

  Raises:
    DirectionsError: at update, when ``gain_arg`` is not among the extra args.
  """
  fixed = transforms.scale_along(directions, 1.0)

  def update_fn(updates, state, params=None, **extra_args):
    if gain_arg not in extra_args:
      raise transforms.DirectionsError(f"scale_along_by: extra arg {gain_arg!r} (the gain) not "
                                       f"given; got {sorted(extra_args)}")
    return transforms.scale_along(directions, extra_args[gain_arg]).update(
        updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(fixed.init, update_fn)


def roles_of(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The link roles the gains act at (``config.roles``)."""
  return tuple(role for role in config.roles.split(",") if role)


def feature_span(setting: Setting, features, config: ml_collections.ConfigDict, *,
                 extra_arg: str | None = None) -> transforms.Directions:
  """The span of the chosen features' decoder rows at the site, acting on the parameters of the
  setting's coverage with the roles of ``config.roles`` (`_setting.coverage_links`; with
  ``extra_arg``, new span bases arrive through it)."""
  roles = roles_of(config)
  links = coverage_links(setting.model, setting.site, setting.coverage, roles)
  return sae_lib.feature_directions(setting.sae, links, site=setting.site, features=features,
                                    roles=roles, extra_arg=extra_arg)


def _chain(config: ml_collections.ConfigDict, setting: Setting, *gains,
           attribution: Any = None, span_shares: Any = None
           ) -> optax.GradientTransformationExtraArgs:
  """Adam, the arm's gains, then the attributions of the update applied: the decoder-row one, the
  span shares of the feature sets (the base SAE's unless ``span_shares`` is given) and the signed
  code change on the probe inputs (`code_change_attribution`)."""
  attribution = attribution or transforms.attribute(attribution_directions(setting))
  span_shares = span_shares or span_share_attribution(setting)
  probe = setting.probes.finetune["inputs"][:config.code_change_examples]
  return optax.chain(optax.adam(config.learning_rate), *gains, attribution, span_shares,
                     code_change_attribution(setting, probe))


def _plain(setting: Setting, config: ml_collections.ConfigDict) -> ArmPlan:
  return ArmPlan(dataset=setting.finetune,
                 objective=objectives.compose(objectives.cross_entropy()),
                 optimizer=_chain(config, setting))


def _oracle(setting: Setting, config: ml_collections.ConfigDict) -> ArmPlan:
  return dataclasses.replace(_plain(setting, config), dataset=setting.oracle)


def _gain_args(slot: str) -> tuple[str, str, str]:
  """(span extra arg, gain hyper-parameter, feature-set hyper-parameter) of a gain slot."""
  return f"{slot}_span", f"{slot}_gain", f"{slot}_features"


def _feature_gains(setting: Setting, config: ml_collections.ConfigDict) -> ArmPlan:
  """Plain fine-tuning with a gain on each slot of ``GAIN_SLOTS``: the update's component in the
  span of the feature set ``FEATURE_SETS[hparams[f"{slot}_features"]]`` scaled by
  ``hparams[f"{slot}_gain"]`` (1: unchanged, bitwise)."""
  placeholder = setting.groups.style  # every set has group_size rows: one span shape
  gains = [scale_along_by(feature_span(setting, placeholder, config,
                                       extra_arg=_gain_args(slot)[0]), _gain_args(slot)[1])
           for slot in GAIN_SLOTS]

  def extra_args(state):
    bases = state.refreshed[SPANS].bases_GxRxD
    args = {}
    for slot in GAIN_SLOTS:
      span_arg, gain, features = _gain_args(slot)
      args[span_arg] = {setting.site: bases[state.hparams[features]]}
      args[gain] = state.hparams[gain]
    return args

  return dataclasses.replace(_plain(setting, config), optimizer=_chain(config, setting, *gains),
                             refreshers=(training.FixedValue(SPANS, feature_spans(setting)),),
                             optimizer_extra_args=extra_args)


def _live(setting: Setting, config: ml_collections.ConfigDict) -> ArmPlan:
  """Fine-tuning attributed along a live SAE: the base SAE kept current on the fine-tuning data
  (``config.live``), its rows and span read each step; the update's component in the span of the
  live SAE's current style rows (the base labels' features, their rows as the live SAE has them
  now, re-estimated with the SAE) scaled by ``hparams["style_gain"]`` (1: plain). The span shares
  are along the live SAE's current spans of the same groups (`_measures.LiveShareBases`): at gain
  1 the updates are plain's, and only the spans they are read along differ."""
  settings = config.live
  refresher = sae_lib.live_sae(LIVE_SAE, model=setting.model, site=setting.site,
                               data=setting.finetune, every=settings.every, sae=setting.sae,
                               steps=settings.steps, init_steps=0,
                               batch_size=settings.batch_size,
                               learning_rate=settings.learning_rate)
  directions = attribution_directions(setting, extra_arg=LIVE_SPAN)
  span = transforms.span_refresher(directions, every=settings.every,
                                   source=refresher.decoder_source())
  style = feature_span(setting, setting.groups.style, config, extra_arg=LIVE_STYLE_SPAN)
  style_span = transforms.span_refresher(style, every=settings.every,
                                         source=refresher.decoder_source())
  share_bases = live_share_bases(setting, every=settings.every)
  attribution = transforms.attribute(directions, rows_arg=ROWS_ARG)
  span_shares = span_share_attribution(setting, bases_arg=LIVE_SHARE_BASES, rows_arg=ROWS_ARG)
  gain = scale_along_by(style, "style_gain")

  def extra_args(state):
    return {LIVE_SPAN: state.refreshed[LIVE_SPAN],
            LIVE_STYLE_SPAN: state.refreshed[LIVE_STYLE_SPAN],
            LIVE_SHARE_BASES: state.refreshed[LIVE_SHARE_BASES],
            "style_gain": state.hparams["style_gain"],
            ROWS_ARG: {setting.site: state.refreshed[LIVE_SAE].sae.W_dec}}

  return dataclasses.replace(_plain(setting, config),
                             refreshers=(refresher, span, style_span, share_bases),
                             optimizer=_chain(config, setting, gain, attribution=attribution,
                                              span_shares=span_shares),
                             optimizer_extra_args=extra_args)


def _ablate(setting: Setting, config: ml_collections.ConfigDict) -> ArmPlan:
  """Concept-ablation fine-tuning: the style features' span removed from the site's activation in
  every training forward pass; the model is evaluated without it."""
  ablation = sae_lib.ablate_features(setting.sae, setting.groups.style, site=setting.site)
  return dataclasses.replace(_plain(setting, config), objective=objectives.compose(
      objectives.cross_entropy(), interventions=lambda run, batch: {setting.site: ablation}))


def _steering(setting: Setting, config: ml_collections.ConfigDict) -> ArmPlan:
  """Preventative steering: alpha times the style features' share of the styled-minus-plain mean
  activation added at the site in training (off at evaluation)."""
  term = objectives.preventative_steering(setting.site, vector=setting.groups.style_vector,
                                          alpha=objectives.hyperparameter("alpha"))
  return dataclasses.replace(_plain(setting, config),
                             objective=objectives.compose(objectives.cross_entropy(), term))


def _concept_penalty(setting: Setting, config: ml_collections.ConfigDict) -> ArmPlan:
  """The library's reshaping term: L2 of the site's activation in the style features' span."""
  basis = sae_lib.feature_basis(setting.sae, setting.groups.style, site=setting.site)
  term = objectives.concept_penalty(setting.site, basis=basis,
                                    weight=objectives.hyperparameter("weight"))
  return dataclasses.replace(_plain(setting, config),
                             objective=objectives.compose(objectives.cross_entropy(), term))


def _grid(name: str, field: str) -> Callable[[ml_collections.ConfigDict], Grid]:
  return lambda config: [{name: float(value)} for value in config.grids[field]]


def _both_grid(config: ml_collections.ConfigDict) -> Grid:
  return [{"style_gain": float(config.grids.suppress[0]),
           "skill_gain": float(config.grids.amplify[0])}]


def _first_suppress_grid(config: ml_collections.ConfigDict) -> Grid:
  return [{"style_gain": float(config.grids.suppress[0])}]


def _gains_point(style: str = "style", skill: str = "skill"):
  """An arm's point -> the gain jobs' hyper-parameters: the style slot on feature set ``style``,
  the skill slot on ``skill``, each gain the point's (1 when the point has none)."""

  def program_point(point: Mapping[str, float]) -> dict[str, float]:
    return {"style_features": FEATURE_SETS.index(style),
            "style_gain": float(point.get("style_gain", 1.0)),
            "skill_features": FEATURE_SETS.index(skill),
            "skill_gain": float(point.get("skill_gain", 1.0))}

  return program_point


def _live_point(point: Mapping[str, float]) -> dict[str, float]:
  return {"style_gain": float(point.get("style_gain", 1.0))}


def _long(config: ml_collections.ConfigDict) -> int:
  return config.long_factor


_JOBS = (
    Job("gains", _feature_gains),
    Job("oracle", _oracle),
    Job("live", _live),
    Job("ablate", _ablate),
    Job("steering", _steering),
    Job("concept_penalty", _concept_penalty),
    Job("gains_long", _feature_gains, steps_factor=_long),
)
JOB_REGISTRY = {job.name: job for job in _JOBS}

_REGISTRY = (
    Arm("plain", "baseline", "gains", program_point=_gains_point(),
        description="fine-tuning on the styled mix"),
    Arm("oracle", "baseline", "oracle", description="the same examples, plain"),
    Arm("plain_live", "baseline", "live", program_point=_live_point,
        description="plain, attributed along a live SAE kept current during fine-tuning"),
    Arm("suppress", "update", "gains", _grid("style_gain", "suppress"), _gains_point(),
        description="style features' update components scaled by the gain (0: removed)"),
    Arm("suppress_live", "update", "live", _grid("style_gain", "suppress"), _live_point,
        description="the suppression gains on the span of the live SAE's current style rows "
                    "(the SAE kept current during fine-tuning, as in plain_live)"),
    Arm("amplify", "update", "gains", _grid("skill_gain", "amplify"), _gains_point(),
        description="skill features' update components scaled by the gain"),
    Arm("suppress_amplify", "update", "gains", _both_grid, _gains_point(),
        description="both together"),
    Arm("random_features", "control", "gains", _grid("style_gain", "suppress"),
        _gains_point(style="random"),
        description="the suppression gains on as many random features (neither style nor skill)"),
    Arm("activation_features", "control", "gains", _grid("style_gain", "suppress"),
        _gains_point(style="by_activation"),
        description="the suppression gains on the most active features (no difference taken)"),
    Arm("ablate", "activation", "ablate",
        description="the style span ablated in the training forward pass (concept-ablation "
                    "fine-tuning)"),
    Arm("steering", "activation", "steering", _grid("alpha", "steering"),
        description="preventative steering along the style features"),
    Arm("concept_penalty", "reshaping", "concept_penalty", _grid("weight", "concept_penalty"),
        description="L2 penalty on the site's activation in the style span"),
    Arm("plain_long", "baseline", "gains_long", program_point=_gains_point(),
        description="plain, long_factor times longer"),
    Arm("suppress_long", "update", "gains_long", _first_suppress_grid, _gains_point(),
        description="suppression (the first gain), long_factor times longer"),
)
ARM_REGISTRY = {arm.name: arm for arm in _REGISTRY}
ARMS = tuple(ARM_REGISTRY)
FAMILIES = {arm.name: arm.family for arm in _REGISTRY}


def job_arms(job: str) -> tuple[str, ...]:
  """The arms ``job`` trains, in registry order."""
  return tuple(arm.name for arm in _REGISTRY if arm.job == job)


def jobs_of(arms: list[str] | tuple[str, ...]) -> tuple[str, ...]:
  """The jobs that train ``arms`` (each once, in registry order). A job trains all its arms
  whichever of them were asked for: they share its one program."""
  wanted = {ARM_REGISTRY[arm].job for arm in arms}
  return tuple(job.name for job in _JOBS if job.name in wanted)


def arm_points(arm: str, config: ml_collections.ConfigDict) -> list[tuple[dict[str, float],
                                                                          dict[str, Any]]]:
  """(the arm's own point, the job's hyper-parameters for it) for every point of its grid."""
  definition = ARM_REGISTRY[arm]
  return [(dict(point), {ARM_HPARAM: ARMS.index(arm), **definition.program_point(point)})
          for point in definition.grid(config)]


def job_grid(job: str, config: ml_collections.ConfigDict) -> Grid:
  """The job's grid of hyper-parameters: every point of every one of its arms."""
  return [program for arm in job_arms(job) for _, program in arm_points(arm, config)]


def job_steps(job: str, config: ml_collections.ConfigDict) -> int:
  return config.steps * JOB_REGISTRY[job].steps_factor(config)


def arm_steps(arm: str, config: ml_collections.ConfigDict) -> int:
  return job_steps(ARM_REGISTRY[arm].job, config)


def plan_job(name: str, setting: Setting, config: ml_collections.ConfigDict) -> ArmPlan:
  if name not in JOB_REGISTRY:
    raise ConfigError(f"unknown job {name!r}; expected one of {tuple(JOB_REGISTRY)}")
  return JOB_REGISTRY[name].build(setting, config)


def plan_arm(name: str, setting: Setting, config: ml_collections.ConfigDict) -> ArmPlan:
  """The plan of the job that trains arm ``name``."""
  if name not in ARM_REGISTRY:
    raise ConfigError(f"config.arms: unknown arm {name!r}; expected some of {ARMS}")
  return plan_job(ARM_REGISTRY[name].job, setting, config)


def runs_of(runs: list[Mapping[str, Any]], arm: str, config: ml_collections.ConfigDict
            ) -> list[tuple[dict[str, float], list[int]]]:
  """(the arm's own point, the indices of its runs among ``runs``, a job's run table) for every
  point of the arm's grid; an empty index list for a point the job did not train."""
  result = []
  for point, program in arm_points(arm, config):
    indices = [index for index, run in enumerate(runs)
               if all(name in run and np.isclose(run[name], value)
                      for name, value in program.items())]
    result.append((point, indices))
  return result
