"""The setting every arm fine-tunes in: the token world, the base GPT pre-trained on plain text, the
SAE at its middle site, and the SAE's features labelled style, skill or other.

Built once per workdir and read back by later invocations: the base model is a `training.train`
run in ``base/`` (resumed like any run), the SAEs and their labels are saved in ``sae/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from landscape import data
from landscape import models
from landscape import objectives
from landscape import sae as sae_lib
from landscape import sae_sources
from landscape import training
from landscape.data import _pirate_arithmetic as pirate

GROUPS = ("style", "skill", "other")
# The `FeatureGroups` fields a gain can act on, in the order of `FeatureSpans.bases_GxRxD`.
FEATURE_SETS = ("style", "skill", "random", "by_activation")
SAE_GROUP = "sae"


@dataclasses.dataclass(frozen=True)
class FeatureGroups:
  """The SAE's features, labelled by their activation difference between probe sets.

  style, skill: int64 indices (disjoint), each ``group_size`` long. random: as many features drawn
    from the others (the random-feature control). by_activation: the most active features on the
    fine-tuning probe set, chosen without the difference (the activation-only control).
  style_score, skill_score: (F,) the labelling statistics (see `label_features`).
  style_vector: (D,) the style features' contribution to the site's mean activation, styled minus
    plain (the preventative steering vector).
  """

  style: np.ndarray
  skill: np.ndarray
  random: np.ndarray
  by_activation: np.ndarray
  style_score: np.ndarray
  skill_score: np.ndarray
  style_vector: np.ndarray

  def masks(self, d_sae: int) -> dict[str, np.ndarray]:
    """group name -> (F,) bool, for "style", "skill", "other" (neither) and "random"."""
    masks = {}
    for name in ("style", "skill", "random"):
      mask = np.zeros(d_sae, bool)
      mask[getattr(self, name)] = True
      masks[name] = mask
    masks["other"] = ~(masks["style"] | masks["skill"])
    return masks

  def as_dict(self) -> dict[str, Any]:
    return {field.name: np.asarray(getattr(self, field.name)).tolist()
            for field in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class ProbeSets:
  """The fixed probe batches (NumPy, fields of `pirate_arithmetic.as_batch`), drawn from keys apart
  from every training stream's.

  style_plain, style_pirate: one content (arithmetic with correct answers in half the examples)
    rendered in each dialect. skill_with: correct sums; skill_without: no arithmetic; both plain.
  finetune: the fine-tuning mix.
  """

  style_plain: dict[str, np.ndarray]
  style_pirate: dict[str, np.ndarray]
  skill_with: dict[str, np.ndarray]
  skill_without: dict[str, np.ndarray]
  finetune: dict[str, np.ndarray]

  def items(self) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(name, batch) for every probe set, in field order."""
    return [(field.name, getattr(self, field.name)) for field in dataclasses.fields(self)]


@dataclasses.dataclass(frozen=True)
class GroupStability:
  """How one feature group of the first SAE reappears in the SAEs of other seeds (see
  `labelling_stability`): its mean best |cosine| with their same group, and with their random
  features (the level two unrelated sets reach)."""

  matched_cosine: float
  random_cosine: float


@dataclasses.dataclass(frozen=True)
class LabellingStability:
  """The labelling's agreement across ``num_saes`` SAE seeds, per group (`GroupStability`; None
  for one SAE)."""

  num_saes: int
  style: GroupStability | None = None
  skill: GroupStability | None = None


@dataclasses.dataclass(frozen=True)
class SAEMetrics:
  """The first SAE's statistics on held-out activations: fraction of variance explained, mean
  number of active features per token, and the fraction of features never active."""

  fve: float
  l0: float
  dead_fraction: float


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FeatureSpans:
  """Orthonormal bases of the spans of each feature set's decoder rows at the site, stacked in
  the order of ``FEATURE_SETS``: (G, R, D), R the group size (rows past a span's rank are zero).

  The value the gain jobs' runs hold as state (`_arms.feature_spans`, kept by `training.FixedValue`)
  and pick their spans from: data of the compiled program, so arms that differ only in which
  features they scale share one program.
  """

  bases_GxRxD: jax.Array


@dataclasses.dataclass(frozen=True)
class Setting:
  """Everything the arms share.

  saes: every SAE trained on the base model (label -> SAE); ``sae`` is the first, the one the arms
    use. stability: how the labelling agrees across the SAEs' seeds.
  """

  world: data.PirateArithmetic
  model: models.Model
  site: str
  base_params: Any
  sae: Any
  saes: dict[str, Any]
  groups: FeatureGroups
  stability: LabellingStability
  finetune: data.Dataset
  oracle: data.Dataset
  probes: ProbeSets
  sae_metrics: SAEMetrics


def make_world(config: ml_collections.ConfigDict) -> data.PirateArithmetic:
  settings = config.world
  return data.PirateArithmetic(modulus=settings.modulus, num_words=settings.num_words,
                               num_pirate=settings.num_pirate, prose_length=settings.prose_length,
                               addend=settings.addend if settings.addend >= 0 else None,
                               seed=settings.seed)


def make_model(config: ml_collections.ConfigDict, world: data.PirateArithmetic) -> models.Model:
  settings = config.model
  return models.gpt(models.GPTConfig(
      vocab_size=world.vocab_size, max_len=world.seq_len, d_model=settings.d_model,
      num_layers=settings.num_layers, num_heads=settings.num_heads, positions="learned"))


def finetune_dataset(config: ml_collections.ConfigDict, world: data.PirateArithmetic, *,
                     style_rate: float | None = None, name: str = "finetune") -> data.Dataset:
  settings = config.finetune
  return data.pirate_arithmetic_dataset(
      world, arithmetic_rate=settings.arithmetic_rate, correct_rate=1.0,
      style_rate=settings.style_rate if style_rate is None else style_rate,
      answer_weight=settings.answer_weight, name=name, eval_size=config.eval_size)


def probe_sets(config: ml_collections.ConfigDict, world: data.PirateArithmetic) -> ProbeSets:
  """The fixed probe batches (see `ProbeSets`), ``config.probe_size`` examples each."""
  size = config.probe_size
  key = jax.random.PRNGKey(config.probe_seed)
  keys = jax.random.split(key, 4)
  numpy = lambda batch: jax.tree_util.tree_map(np.asarray, batch)
  style_content = pirate.sample_content(world, keys[0], size, arithmetic_rate=0.5, correct_rate=1.0)
  with_skill = pirate.sample_content(world, keys[1], size, arithmetic_rate=1.0, correct_rate=1.0)
  without_skill = pirate.sample_content(world, keys[2], size, arithmetic_rate=0.0, correct_rate=1.0)
  finetune = pirate.pirate_arithmetic_task(
      world, arithmetic_rate=config.finetune.arithmetic_rate, correct_rate=1.0,
      style_rate=config.finetune.style_rate,
      answer_weight=config.finetune.answer_weight)(keys[3], size)
  return ProbeSets(style_plain=numpy(pirate.as_batch(world, style_content, False)),
                   style_pirate=numpy(pirate.as_batch(world, style_content, True)),
                   skill_with=numpy(pirate.as_batch(world, with_skill, False)),
                   skill_without=numpy(pirate.as_batch(world, without_skill, False)),
                   finetune=numpy(finetune))


def pretrain(config: ml_collections.ConfigDict, workdir: str, world: data.PirateArithmetic,
             model: models.Model) -> Any:
  """The base model: ``config.pretrain.steps`` of next-token training on plain text in which the
  arithmetic's answers are right only at ``config.pretrain.correct_rate``. One seed, resumed like
  any run; returns its parameters (NumPy, one run)."""
  settings = config.pretrain
  dataset = data.pirate_arithmetic_dataset(
      world, arithmetic_rate=settings.arithmetic_rate, correct_rate=settings.correct_rate,
      style_rate=settings.style_rate, name="pretrain", eval_size=config.eval_size)
  loop = training.loop_config()
  loop.update(dict(seed=config.seed, num_seeds=1, steps=settings.steps,
                   batch_size=settings.batch_size, log_every=max(1, settings.steps // 5),
                   eval_every=settings.steps, checkpoint_every=settings.steps,
                   steps_per_call=min(settings.steps, 100), tensorboard=False))
  loop.experiment = ml_collections.ConfigDict(dict(
      stage="pretrain", world=config.world.to_dict(), model=config.model.to_dict(),
      pretrain=settings.to_dict(), eval_size=config.eval_size))
  base_dir = os.path.join(workdir, "base")
  training.train(loop, base_dir, model=model,
                 objective=objectives.compose(objectives.cross_entropy()),
                 optimizer=optax.adam(settings.learning_rate), dataset=dataset, progress=False)
  return training.load_params(base_dir, run=0)


def site_codes(sae: Any, model: models.Model, params: Any, inputs: jax.Array, site: str
               ) -> jax.Array:
  """(B, F) each example's SAE codes at ``site``, averaged over positions; traceable."""
  _, acts = model.forward(params, inputs, capture=[site])
  return jnp.mean(sae.encode(acts[site].astype(jnp.float32)), axis=1)


def label_features(sae: Any, model: models.Model, params: Any, probes: ProbeSets, *, site: str,
                   group_size: int, seed: int) -> FeatureGroups:
  """Style and skill features by activation difference between probe sets.

  Style score: the paired t statistic over examples of (mean code styled - mean code plain), one
  content rendered in both dialects. Skill score: Welch's t statistic of the mean code with correct
  sums against without arithmetic. The ``group_size`` features of highest style score are the style
  group; of the rest, those of highest skill score the skill group. A feature never active on the
  probes scores 0.
  """
  codes_of = jax.jit(lambda sae, params, inputs: site_codes(sae, model, params, inputs, site))
  codes = {name: np.asarray(codes_of(sae, params, jnp.asarray(batch["inputs"])), np.float64)
           for name, batch in probes.items()}
  difference = codes["style_pirate"] - codes["style_plain"]
  spread = difference.std(axis=0, ddof=1) / np.sqrt(len(difference))
  style_score = np.where(spread > 0, difference.mean(axis=0) / np.where(spread > 0, spread, 1), 0)
  with_skill, without = codes["skill_with"], codes["skill_without"]
  spread = np.sqrt(with_skill.var(axis=0, ddof=1) / len(with_skill)
                   + without.var(axis=0, ddof=1) / len(without))
  skill_score = np.where(spread > 0, (with_skill.mean(0) - without.mean(0))
                         / np.where(spread > 0, spread, 1), 0)
  style = np.argsort(-style_score, kind="stable")[:group_size]
  remaining = np.setdiff1d(np.arange(sae.d_sae), style)
  skill = remaining[np.argsort(-skill_score[remaining], kind="stable")[:group_size]]
  others = np.setdiff1d(remaining, skill)
  random = np.sort(np.random.default_rng(seed).choice(others, size=group_size, replace=False))
  by_activation = np.argsort(-codes["finetune"].mean(axis=0), kind="stable")[:group_size]
  decoder = np.asarray(sae.W_dec, np.float64)
  style_vector = difference.mean(axis=0)[style] @ decoder[style]
  return FeatureGroups(style=np.sort(style), skill=np.sort(skill), random=random,
                       by_activation=np.sort(by_activation), style_score=style_score,
                       skill_score=skill_score, style_vector=style_vector)


def labelling_stability(saes: Mapping[str, Any], labelled: Mapping[str, FeatureGroups]
                        ) -> LabellingStability:
  """How the first SAE's style and skill features reappear in the SAEs of other seeds.

  For each group, the mean over its features of the largest |cosine| between its decoder row and
  the rows of the same group in another SAE, averaged over the other SAEs; beside it the same for
  that SAE's random features (the level two unrelated sets reach).
  """
  labels = list(saes)
  first = labels[0]

  def unit(rows):
    rows = np.asarray(rows, np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)

  if len(labels) < 2:
    return LabellingStability(num_saes=len(labels))
  decoder = unit(saes[first].W_dec)
  result = {}
  for group in ("style", "skill"):
    matched, chance = [], []
    for other in labels[1:]:
      other_decoder = unit(saes[other].W_dec)
      mine = decoder[getattr(labelled[first], group)]
      matched.append(np.abs(mine @ other_decoder[getattr(labelled[other], group)].T).max(1).mean())
      chance.append(np.abs(mine @ other_decoder[labelled[other].random].T).max(1).mean())
    result[group] = GroupStability(matched_cosine=float(np.mean(matched)),
                                   random_cosine=float(np.mean(chance)))
  return LabellingStability(num_saes=len(labels), **result)


def _sae_dataset(config: ml_collections.ConfigDict, world: data.PirateArithmetic) -> data.Dataset:
  """What the SAE reads: every kind of text, both dialects (a style the base model never saw in
  training still has activations, and the SAE must be able to name them)."""
  return data.pirate_arithmetic_dataset(world, arithmetic_rate=0.5, correct_rate=0.5,
                                        style_rate=0.5, name="sae_text", eval_size=config.eval_size)


def train_saes(config: ml_collections.ConfigDict, model: models.Model, params: Any,
               world: data.PirateArithmetic, site: str) -> tuple[dict[str, Any], SAEMetrics]:
  """``config.sae.num_seeds`` TopK SAEs on the base model's activations at ``site``, in one
  program; (label -> SAE on raw activations, the first SAE's evaluation statistics)."""
  settings = config.sae
  source = sae_sources.model_source(model, params, site=site, dataset=_sae_dataset(config, world),
                                batch_size=settings.batch_size, buffer_size=settings.buffer_size,
                                model_batch_size=settings.model_batch_size)
  recipe = sae_lib.Recipe("topk", d_sae=settings.d_sae, k=settings.k,
                          warmup_steps=min(100, settings.steps // 10),
                          dead_after_tokens=settings.batch_size * 200)
  members = tuple(sae_lib.Member(seed=config.seed + index, learning_rate=settings.learning_rate)
                  for index in range(settings.num_seeds))
  groups = [sae_lib.SAEGroup(SAE_GROUP, recipe, members)]
  state = sae_lib.init_train_state(jax.random.PRNGKey(config.seed), groups, source,
                                   total_steps=settings.steps)
  chunk = sae_lib.make_train_chunk(groups, source, total_steps=settings.steps)
  state, _ = chunk(state, source.arrays, settings.steps)
  stats = sae_lib.make_evaluate(groups)(state, jnp.asarray(source.eval_acts))[SAE_GROUP]
  metrics = SAEMetrics(**{field.name: float(np.asarray(getattr(stats, field.name))[0])
                          for field in dataclasses.fields(SAEMetrics)})
  return sae_lib.trained_saes(groups, state), metrics


def _save_saes(path: str, saes: Mapping[str, Any]) -> None:
  arrays = {}
  for index, sae in enumerate(saes.values()):
    for leaf_index, leaf in enumerate(jax.tree_util.tree_leaves(sae)):
      arrays[f"{index}/{leaf_index}"] = np.asarray(leaf)
  np.savez(path, **arrays)


def _load_saes(path: str, labels: list[str], config: ml_collections.ConfigDict,
               d_in: int) -> dict[str, Any]:
  template = sae_lib.init_sae(jax.random.PRNGKey(0), "topk", d_in, config.sae.d_sae,
                              k=config.sae.k)
  treedef = jax.tree_util.tree_structure(template)
  with np.load(path) as stored:
    return {label: jax.tree_util.tree_unflatten(treedef, [
        jnp.asarray(stored[f"{index}/{leaf}"]) for leaf in range(treedef.num_leaves)])
            for index, label in enumerate(labels)}


def build_setting(config: ml_collections.ConfigDict, workdir: str) -> Setting:
  """The base model, the SAEs and the labels: computed, or read back from ``workdir``."""
  world = make_world(config)
  model = make_model(config, world)
  site = config.site
  model.check_sites([site], what="config.site")
  base_params = pretrain(config, workdir, world, model)
  sae_dir = os.path.join(workdir, "sae")
  os.makedirs(sae_dir, exist_ok=True)
  index_path = os.path.join(sae_dir, "saes.json")
  identity = dict(sae=config.sae.to_dict(), site=site, seed=config.seed)
  d_in = config.model.d_model
  if os.path.exists(index_path):
    with open(index_path) as handle:
      index = json.load(handle)
    if index["identity"] != json.loads(json.dumps(identity)):
      raise training.ConfigError(f"config.sae / config.site differ from the SAEs in {sae_dir} "
                                 f"({index['identity']}); use a fresh --workdir")
    saes = _load_saes(os.path.join(sae_dir, "saes.npz"), index["labels"], config, d_in)
    sae_metrics = SAEMetrics(**index["metrics"])
  else:
    saes, sae_metrics = train_saes(config, model, base_params, world, site)
    _save_saes(os.path.join(sae_dir, "saes.npz"), saes)
    training.write_json_atomically(index_path, dict(identity=identity, labels=list(saes),
                                                    metrics=dataclasses.asdict(sae_metrics)))
  probes = probe_sets(config, world)
  labelled = {label: label_features(sae, model, base_params, probes, site=site,
                                    group_size=config.group_size, seed=config.seed + 1000)
              for label, sae in saes.items()}
  first = next(iter(saes))
  groups = labelled[first]
  stability = labelling_stability(saes, labelled)
  training.write_json_atomically(os.path.join(sae_dir, "features.json"),
                                 dict(groups=groups.as_dict(),
                                      stability=dataclasses.asdict(stability),
                                      sae_metrics=dataclasses.asdict(sae_metrics)))
  return Setting(world=world, model=model, site=site, base_params=base_params, sae=saes[first],
                 saes=dict(saes), groups=groups, stability=stability,
                 finetune=finetune_dataset(config, world),
                 oracle=finetune_dataset(config, world, style_rate=0.0, name="oracle"),
                 probes=probes, sae_metrics=sae_metrics)
