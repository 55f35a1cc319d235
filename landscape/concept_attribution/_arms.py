"""The arms, as data: what each fine-tunes with, in one program per arm (seeds times its grid).

Every arm warm-starts from the base model, fine-tunes with Adam and ends its optimizer chain with
`transforms.attribute` over every SAE feature (so the attribution is of the update the arm
applies). Gains on SAE features act through `transforms.scale_along` over the span of the chosen
features' decoder rows, at the links that write into the site (the same links the attribution
reads), and reach the program as hyper-parameters of its grid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import optax

from landscape import data
from landscape import objectives
from landscape import sae as sae_lib
from landscape import training
from landscape import transforms
from landscape.concept_attribution._measures import LIVE_SAE
from landscape.concept_attribution._measures import LIVE_SPAN
from landscape.concept_attribution._measures import ROWS_ARG
from landscape.concept_attribution._measures import attribution_directions
from landscape.concept_attribution._measures import code_change_attribution
from landscape.concept_attribution._setting import Setting
from landscape.training import ConfigError

Grid = list[dict[str, float]]


@dataclasses.dataclass
class ArmPlan:
  """Everything `training.train` needs for one arm."""

  dataset: data.Dataset
  objective: objectives.Objective
  optimizer: optax.GradientTransformationExtraArgs
  refreshers: tuple[Any, ...] = ()
  optimizer_extra_args: Callable[[training.TrainState], Mapping[str, Any]] | None = None
  live: bool = False


@dataclasses.dataclass(frozen=True)
class Arm:
  """One arm, as data.

  name: its directory and its rows in the report. family: "baseline", "update" (gains on the
  update's components along SAE features), "control" (the same gains on other features),
  "activation" (interventions on the site's activation in training) or "reshaping" (a loss term).
  build: (setting, config) -> its plan. grid: config -> its grid of hyper-parameters (every point
  trained with every seed in the arm's one program). steps_factor: its steps are this many times
  ``config.steps`` (the long runs).
  """

  name: str
  family: str
  build: Callable[[Setting, ml_collections.ConfigDict], ArmPlan]
  grid: Callable[[ml_collections.ConfigDict], Grid] = lambda config: [{}]
  steps_factor: Callable[[ml_collections.ConfigDict], int] = lambda config: 1
  description: str = ""


def scale_along_by(directions: transforms.Directions, gain_arg: str
                   ) -> optax.GradientTransformationExtraArgs:
  """`transforms.scale_along` whose (scalar) gain arrives each step as the extra arg ``gain_arg``
  (a run's hyper-parameter, so runs with different gains share one program).

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


def _roles(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return tuple(role for role in config.roles.split(",") if role)


def feature_span(setting: Setting, features, config: ml_collections.ConfigDict
                 ) -> transforms.Directions:
  """The span of the chosen features' decoder rows at the site, at the links of ``config.roles``."""
  return sae_lib.feature_directions(setting.sae, setting.model.site_links, site=setting.site,
                                    features=features, roles=_roles(config))


def _chain(config: ml_collections.ConfigDict, setting: Setting, *gains,
           attribution: Any = None) -> optax.GradientTransformationExtraArgs:
  """Adam, the arm's gains, then the attributions of the update applied: the decoder-row one and
  the signed code change on the probe inputs (`code_change_attribution`)."""
  attribution = attribution or transforms.attribute(attribution_directions(setting))
  probe = setting.probes["finetune"]["inputs"][:config.code_change_examples]
  return optax.chain(optax.adam(config.learning_rate), *gains, attribution,
                     code_change_attribution(setting, probe))


def _hparams(*names: str):
  return lambda state: {name: state.hparams[name] for name in names}


def _plain(setting: Setting, config: ml_collections.ConfigDict) -> ArmPlan:
  return ArmPlan(dataset=setting.finetune,
                 objective=objectives.compose(objectives.cross_entropy()),
                 optimizer=_chain(config, setting))


def _oracle(setting: Setting, config: ml_collections.ConfigDict) -> ArmPlan:
  return dataclasses.replace(_plain(setting, config), dataset=setting.oracle)


def _gains(features_of: Mapping[str, str]):
  """An arm scaling the update along each named group's features by the hyper-parameter of that
  name: hparam name -> `FeatureGroups` field."""

  def build(setting: Setting, config: ml_collections.ConfigDict) -> ArmPlan:
    gains = [scale_along_by(feature_span(setting, getattr(setting.groups, field), config), name)
             for name, field in features_of.items()]
    return dataclasses.replace(_plain(setting, config), optimizer=_chain(config, setting, *gains),
                               optimizer_extra_args=_hparams(*features_of))

  return build


def _live(setting: Setting, config: ml_collections.ConfigDict) -> ArmPlan:
  """Plain fine-tuning, attributed along a live SAE: the base SAE kept current on the fine-tuning
  data (``config.live``), its rows and span read each step."""
  settings = config.live
  refresher = sae_lib.live_sae(LIVE_SAE, model=setting.model, site=setting.site,
                               data=setting.finetune, every=settings.every, sae=setting.sae,
                               steps=settings.steps, init_steps=0,
                               batch_size=settings.batch_size,
                               learning_rate=settings.learning_rate)
  directions = attribution_directions(setting, extra_arg=LIVE_SPAN)
  span = transforms.span_refresher(directions, every=settings.every,
                                   source=refresher.decoder_source())
  attribution = transforms.attribute(directions, rows_arg=ROWS_ARG)

  def extra_args(state):
    return {LIVE_SPAN: state.refreshed[LIVE_SPAN],
            ROWS_ARG: {setting.site: state.refreshed[LIVE_SAE].sae.W_dec}}

  return dataclasses.replace(_plain(setting, config), refreshers=(refresher, span),
                             optimizer=_chain(config, setting, attribution=attribution),
                             optimizer_extra_args=extra_args, live=True)


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


def _long(config: ml_collections.ConfigDict) -> int:
  return config.long_factor


_REGISTRY = (
    Arm("plain", "baseline", _plain, description="fine-tuning on the styled mix"),
    Arm("oracle", "baseline", _oracle, description="the same examples, plain"),
    Arm("plain_live", "baseline", _live,
        description="plain, attributed along a live SAE kept current during fine-tuning"),
    Arm("suppress", "update", _gains({"style_gain": "style"}), _grid("style_gain", "suppress"),
        description="style features' update components scaled by the gain (0: removed)"),
    Arm("amplify", "update", _gains({"skill_gain": "skill"}), _grid("skill_gain", "amplify"),
        description="skill features' update components scaled by the gain"),
    Arm("suppress_amplify", "update", _gains({"style_gain": "style", "skill_gain": "skill"}),
        _both_grid, description="both together"),
    Arm("random_features", "control", _gains({"style_gain": "random"}),
        _grid("style_gain", "suppress"),
        description="the suppression gains on as many random features (neither style nor skill)"),
    Arm("activation_features", "control", _gains({"style_gain": "by_activation"}),
        _grid("style_gain", "suppress"),
        description="the suppression gains on the most active features (no difference taken)"),
    Arm("ablate", "activation", _ablate,
        description="the style span ablated in the training forward pass (concept-ablation "
                    "fine-tuning)"),
    Arm("steering", "activation", _steering, _grid("alpha", "steering"),
        description="preventative steering along the style features"),
    Arm("concept_penalty", "reshaping", _concept_penalty, _grid("weight", "concept_penalty"),
        description="L2 penalty on the site's activation in the style span"),
    Arm("plain_long", "baseline", _plain, steps_factor=_long,
        description="plain, long_factor times longer"),
    Arm("suppress_long", "update", _gains({"style_gain": "style"}),
        lambda config: [{"style_gain": float(config.grids.suppress[0])}], steps_factor=_long,
        description="suppression (the first gain), long_factor times longer"),
)
ARM_REGISTRY = {arm.name: arm for arm in _REGISTRY}
ARMS = tuple(ARM_REGISTRY)
FAMILIES = {arm.name: arm.family for arm in _REGISTRY}


def plan_arm(name: str, setting: Setting, config: ml_collections.ConfigDict) -> ArmPlan:
  if name not in ARM_REGISTRY:
    raise ConfigError(f"config.arms: unknown arm {name!r}; expected some of {ARMS}")
  return ARM_REGISTRY[name].build(setting, config)
