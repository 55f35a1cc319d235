"""The setting every arm fine-tunes in: the token world, the base GPT pre-trained on plain text, the
SAE at its middle site, the SAE's features labelled style, skill or other, and the parameters the
gains and the attribution act on (`coverage_links`).

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
from landscape.sites import BadInputError
from landscape.sites import ParamLink

GROUPS = ("style", "skill", "other")
# The `FeatureGroups` fields a gain can act on, in the order of `FeatureSpans.bases_GxRxD` (and of
# the span shares, `_measures.span_share_attribution`).
FEATURE_SETS = ("style", "skill", "random", "by_activation")
COVERAGES = ("site", "stream")
SAE_GROUP = "sae"


@dataclasses.dataclass(frozen=True)
class GroupMasks:
  """(F,) bool masks of the feature groups: style, skill, the random control, and other (neither
  style nor skill)."""

  style: np.ndarray
  skill: np.ndarray
  random: np.ndarray
  other: np.ndarray


@dataclasses.dataclass(frozen=True)
class FeatureGroups:
  """The SAE's features, labelled by their activation difference between probe sets.

  style, skill: int64 indices (disjoint), each ``group_size`` long. random: as many features drawn
    from the others that are active on the probe sets (the random-feature control).
    by_activation: the most active features on the fine-tuning probe set, chosen without the
    difference (the activation-only control). null_groups: (K, group_size) K random groups, each
    matched on activation to the style group (`activation_matched_group`); the mean of their span
    shares is the null level of the span-share check (one random group's span depends on which
    features it drew, and every seed shares it).
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
  null_groups: np.ndarray

  def masks(self, d_sae: int) -> GroupMasks:
    """The groups as (F,) bool masks."""
    masks = {}
    for name in ("style", "skill", "random"):
      mask = np.zeros(d_sae, bool)
      mask[getattr(self, name)] = True
      masks[name] = mask
    return GroupMasks(**masks, other=~(masks["style"] | masks["skill"]))

  def as_dict(self) -> dict[str, Any]:
    return {field.name: np.asarray(getattr(self, field.name)).tolist()
            for field in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class ProbeSets:
  """The fixed probe batches (NumPy, fields of `pirate_arithmetic.as_batch`), drawn from keys apart
  from every training stream's.

  style_plain, style_pirate: one content (arithmetic with correct answers in half the examples)
    rendered in each dialect. skill_correct, skill_incorrect: one set of sums, plain, with the
    correct answer and with a wrong one (`wrong_answers`): the same format and dialect, only the
    answer differs. finetune: the fine-tuning mix.
  """

  style_plain: dict[str, np.ndarray]
  style_pirate: dict[str, np.ndarray]
  skill_correct: dict[str, np.ndarray]
  skill_incorrect: dict[str, np.ndarray]
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

  The value the gain jobs' runs hold as state (`_measures.feature_spans`, kept by
  `training.FixedValue`) and pick their spans from: data of the compiled program, so arms that
  differ only in which features they scale share one program.
  """

  bases_GxRxD: jax.Array


@dataclasses.dataclass(frozen=True)
class Setting:
  """Everything the arms share.

  coverage: which parameters the gains and the attribution act on (`coverage_links`).
  saes: every SAE trained on the base model (label -> SAE); ``sae`` is the first, the one the arms
    use. stability: how the labelling agrees across the SAEs' seeds.
  """

  world: data.PirateArithmetic
  model: models.Model
  site: str
  coverage: str
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


def wrong_answers(world: data.PirateArithmetic, content: pirate.Content, key: jax.Array
                  ) -> pirate.Content:
  """``content`` (arithmetic, correct) with every answer replaced by a wrong digit, uniform over
  the other M - 1: the same sums and prose, only the answer token differs."""
  answer = content.problem[:, pirate.ANSWER_INDEX]
  offset = jax.random.randint(key, answer.shape, 1, world.modulus)
  problem = content.problem.at[:, pirate.ANSWER_INDEX].set((answer + offset) % world.modulus)
  return content._replace(problem=problem, correct=jnp.zeros_like(content.correct))


STYLE_RATE_HPARAM = "style_rate"


def style_rate_dataset(config: ml_collections.ConfigDict, world: data.PirateArithmetic
                       ) -> data.Dataset:
  """The fine-tuning mix with each run's style rate its hyper-parameter ``style_rate``, so runs
  with and without the style train in one program (the planted test's grid). Batch t is the
  fine-tuning dataset's batch t at rate 1 and the oracle's at rate 0 (the same keys: the same
  content, rendered plain); its evaluation sets are the fine-tuning dataset's."""
  settings = config.finetune
  base = finetune_dataset(config, world)

  def sample(arrays, data_key, step, batch_size, hparams):
    del arrays
    content_key, style_key = jax.random.split(jax.random.fold_in(data_key, step))
    content = pirate.sample_content(world, content_key, batch_size,
                                    arithmetic_rate=settings.arithmetic_rate, correct_rate=1.0)
    styled = jax.random.bernoulli(style_key, hparams[STYLE_RATE_HPARAM], (batch_size,))
    return pirate.as_batch(world, content, styled, answer_weight=settings.answer_weight)

  return dataclasses.replace(base, name="finetune[style_rate per run]", sampler=sample)


def probe_sets(config: ml_collections.ConfigDict, world: data.PirateArithmetic) -> ProbeSets:
  """The fixed probe batches (see `ProbeSets`), ``config.probe_size`` examples each."""
  size = config.probe_size
  key = jax.random.PRNGKey(config.probe_seed)
  keys = jax.random.split(key, 4)
  numpy = lambda batch: jax.tree_util.tree_map(np.asarray, batch)
  style_content = pirate.sample_content(world, keys[0], size, arithmetic_rate=0.5, correct_rate=1.0)
  sums = pirate.sample_content(world, keys[1], size, arithmetic_rate=1.0, correct_rate=1.0)
  wrong = wrong_answers(world, sums, keys[2])
  finetune = pirate.pirate_arithmetic_task(
      world, arithmetic_rate=config.finetune.arithmetic_rate, correct_rate=1.0,
      style_rate=config.finetune.style_rate,
      answer_weight=config.finetune.answer_weight)(keys[3], size)
  return ProbeSets(style_plain=numpy(pirate.as_batch(world, style_content, False)),
                   style_pirate=numpy(pirate.as_batch(world, style_content, True)),
                   skill_correct=numpy(pirate.as_batch(world, sums, False)),
                   skill_incorrect=numpy(pirate.as_batch(world, wrong, False)),
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


def residual_sites(site_names) -> list[str]:
  """The model's residual-stream sites: ``embed`` and every ``*.resid_pre`` / ``*.resid_post``
  (the GPT zoo's site names; another model would need its own list)."""
  return [site for site in site_names
          if site == "embed" or site.endswith((".resid_pre", ".resid_post"))]


def coverage_links(model: models.Model, site: str, coverage: str, roles: tuple[str, ...]
                   ) -> dict[str, tuple[ParamLink, ...]]:
  """The links, keyed by ``site``, through which directions at ``site`` act on the parameters.

  ``coverage="site"``: the site's own links (its writers are the previous block's outputs, its
  readers the next block's inputs). ``coverage="stream"``: the links of every residual-stream site
  (`residual_sites`), since in a pre-LayerNorm GPT the residual stream is one D-dimensional space
  that every block reads and writes: the token and position embeddings, every block's
  ``attention.out`` and ``mlp.out`` (writers), every block's ``attention.qkv`` and ``mlp.hidden``
  and the unembedding (readers; the tied token table is both). Only links whose role is in
  ``roles`` are kept, each (path, axis, stack index) once (the tied table's writer and reader
  links act on the same axis: scaling it twice would square the gain).
  """
  unknown = set(roles) - {"writes", "reads"}
  if coverage not in COVERAGES or unknown or not roles:
    raise BadInputError(f"coverage_links: coverage={coverage!r} (expected one of {COVERAGES}), "
                        f"roles={roles!r} (expected 'writes' and/or 'reads')")
  site_links = model.site_links
  sites = [site] if coverage == "site" else residual_sites(site_links)
  kept, seen = [], set()
  for role in ("writes", "reads"):
    if role not in roles:
      continue
    for name in sites:
      for link in site_links[name]:
        path = (link.path,) if isinstance(link.path, str) else tuple(link.path)
        key = (path, link.axis, link.index)
        if link.role == role and key not in seen:
          seen.add(key)
          kept.append(link)
  if not kept:
    raise BadInputError(f"coverage_links: coverage={coverage!r} with roles={roles!r} links no "
                        f"parameter at {site!r} (residual sites found: {sites})")
  return {site: tuple(kept)}


def site_codes(sae: Any, model: models.Model, params: Any, inputs: jax.Array, site: str
               ) -> jax.Array:
  """(B, F) each example's SAE codes at ``site``, averaged over positions; traceable."""
  _, acts = model.forward(params, inputs, capture=[site])
  return jnp.mean(sae.encode(acts[site].astype(jnp.float32)), axis=1)


def paired_t(difference_BxF: np.ndarray) -> np.ndarray:
  """(F,) the paired t statistic of each column's mean; 0 where the column does not vary."""
  spread = difference_BxF.std(axis=0, ddof=1) / np.sqrt(len(difference_BxF))
  return np.where(spread > 0, difference_BxF.mean(axis=0) / np.where(spread > 0, spread, 1), 0.0)


MATCH_NEIGHBOURS = 3  # a null feature is drawn among this many pool features nearest in activity


def activation_matched_group(features: np.ndarray, pool: np.ndarray, activity: np.ndarray,
                             rng: np.random.Generator) -> np.ndarray:
  """A random group matched on activation to ``features``: for each of them (in random order), one
  feature of ``pool`` not drawn yet, uniform among the ``MATCH_NEIGHBOURS`` nearest in ``activity``
  (F,) (the mean code on the probe sets). Sorted int64 indices, as many as ``features``.

  Raises:
    BadInputError: a pool smaller than ``features``.
  """
  if len(pool) < len(features):
    raise BadInputError(f"activation_matched_group: pool of {len(pool)} features for a group of "
                        f"{len(features)}")
  chosen, left = [], np.asarray(pool)
  for feature in rng.permutation(np.asarray(features)):
    nearest = np.argsort(np.abs(activity[left] - activity[feature]), kind="stable")
    pick = nearest[rng.integers(min(MATCH_NEIGHBOURS, len(left)))]
    chosen.append(left[pick])
    left = np.delete(left, pick)
  return np.sort(np.asarray(chosen, np.int64))


def label_features(sae: Any, model: models.Model, params: Any, probes: ProbeSets, *, site: str,
                   group_size: int, seed: int, null_groups: int = 0) -> FeatureGroups:
  """Style and skill features by activation difference between paired probe sets.

  Style score: the paired t statistic over examples of (mean code styled - mean code plain), one
  content rendered in both dialects. Skill score: the paired t statistic of (mean code with the
  correct answer - with a wrong one), one set of plain sums differing only in the answer token (so
  the format and the dialect cancel). The ``group_size`` features of highest style score are the
  style group; of the rest, those of highest skill score the skill group. A feature whose
  difference never varies scores 0. The random control is drawn (generator ``seed``) from the
  remaining features active on the probe sets (all remaining ones when fewer than ``group_size``
  are): a dead feature's row is a direction no activation uses. Each of the ``null_groups`` null
  groups is drawn from the same pool matched on activation to the style group
  (`activation_matched_group`, on the mean code over every probe set): updates lean towards
  active directions, and the style features are among the most active, so a uniform draw gives a
  null level the style's rows beat for that reason alone.
  """
  codes_of = jax.jit(lambda sae, params, inputs: site_codes(sae, model, params, inputs, site))
  codes = {name: np.asarray(codes_of(sae, params, jnp.asarray(batch["inputs"])), np.float64)
           for name, batch in probes.items()}
  difference = codes["style_pirate"] - codes["style_plain"]
  style_score = paired_t(difference)
  skill_score = paired_t(codes["skill_correct"] - codes["skill_incorrect"])
  style = np.argsort(-style_score, kind="stable")[:group_size]
  remaining = np.setdiff1d(np.arange(sae.d_sae), style)
  skill = remaining[np.argsort(-skill_score[remaining], kind="stable")[:group_size]]
  others = np.setdiff1d(remaining, skill)
  activity = np.mean(np.stack([values.mean(axis=0) for values in codes.values()]), axis=0)
  live = others[activity[others] > 0]
  pool = live if len(live) >= group_size else others
  rng = np.random.default_rng(seed)
  random = np.sort(rng.choice(pool, size=group_size, replace=False))
  null = np.stack([activation_matched_group(style, pool, activity, rng)
                   for _ in range(null_groups)]) if null_groups else np.zeros((0, group_size), int)
  by_activation = np.argsort(-codes["finetune"].mean(axis=0), kind="stable")[:group_size]
  decoder = np.asarray(sae.W_dec, np.float64)
  style_vector = difference.mean(axis=0)[style] @ decoder[style]
  return FeatureGroups(style=np.sort(style), skill=np.sort(skill), random=random,
                       by_activation=np.sort(by_activation), style_score=style_score,
                       skill_score=skill_score, style_vector=style_vector, null_groups=null)


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
                                    group_size=config.group_size, seed=config.seed + 1000,
                                    null_groups=config.null_groups)
              for label, sae in saes.items()}
  first = next(iter(saes))
  groups = labelled[first]
  stability = labelling_stability(saes, labelled)
  training.write_json_atomically(os.path.join(sae_dir, "features.json"),
                                 dict(groups=groups.as_dict(),
                                      stability=dataclasses.asdict(stability),
                                      sae_metrics=dataclasses.asdict(sae_metrics)))
  return Setting(world=world, model=model, site=site, coverage=config.coverage,
                 base_params=base_params, sae=saes[first],
                 saes=dict(saes), groups=groups, stability=stability,
                 finetune=finetune_dataset(config, world),
                 oracle=finetune_dataset(config, world, style_rate=0.0, name="oracle"),
                 probes=probes, sae_metrics=sae_metrics)
