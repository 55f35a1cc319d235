"""Training sparse autoencoders: what ``python -m experiments.train_sae`` runs (configs/train_sae.py).

``run(config, workdir)`` trains every SAE of ``config.saes`` over one activation stream, in one
compiled program (each group vmapped over its members), and writes the foundation's outputs under
``workdir``: ``config.json``, ``metrics.jsonl`` (one value per SAE, in the order of
``summary.json``'s ``labels``), ``checkpoints/`` (orbax; rerunning resumes from the latest, and on
CPU ends bitwise where an uninterrupted run ends), ``summary.json``, ``saes/<label>/`` (each SAE in
SAELens's layout, its input normalisation folded in), ``densities.npz`` and ``report.md`` with its
figures (the table per SAE, the FVE-versus-L0 frontier, feature-density histograms).

The activations come from a site of a landscape model run over a landscape dataset (its parameters
from an ``experiments.train`` run's checkpoint or from initialisation), from arrays (an .npy file,
or an array passed to `run`), or from a planted dictionary, whose features are known: the report then
also gives each SAE's mean max cosine with them (MMCS) and judges the config's target.

Every field is checked before anything is compiled: a bad one raises `ConfigError` naming it and its
value.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import os
import platform
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from matplotlib.figure import Figure

from landscape import models
from landscape import sae_sources
from landscape import supervised
from landscape import training
from landscape.sae import _planted as planted_lib
from landscape.sae import _sources as sources
from landscape.sae import _train as sae_train
from landscape.sae._architectures import ARCHITECTURES
from landscape.sae._architectures import SAE
from landscape.sae._metrics import density_histogram
from landscape.sae._saelens import save_saelens
from landscape.sae._training import NORMALIZATION_TARGETS
from landscape.sites import BadInputError
from landscape.training import ConfigError

SOURCES = ("model", "arrays", "planted")
DEFAULT_COMMAND = "landscape.train_sae.run(config, workdir)"
# Evaluation metrics logged per SAE (the dead fraction is over the evaluation set's examples).
EVAL_METRICS = ("fve", "nmse", "l0", "dead_fraction")
RECOVERY_THRESHOLD = 0.9
# Fields of a group config that go to `Recipe` under the same name.
RECIPE_FIELDS = ("d_sae", "tied_init", "decoder_norm", "unit_norm_decoder", "b_dec_init",
                 "initial_threshold", "bandwidth", "adam_b1", "adam_b2", "grad_clip_norm",
                 "warmup_steps", "decay_start", "sparsity_warmup_steps", "k_aux",
                 "dead_after_tokens", "resample_every", "k_anneal_steps", "threshold_beta",
                 "threshold_start_step", "compute_dtype")


@dataclasses.dataclass
class TrainSAEResult:
  """What `run` leaves besides its files.

  state: the final `SAETrainState`. saes: label -> each SAE on raw activations (normalisation
  folded in). summary: the contents of summary.json. evaluations: step -> "eval/{metric}" -> (SAEs,)
  values, every evaluation of this invocation.
  """

  state: sae_train.SAETrainState
  saes: dict[str, SAE]
  summary: dict[str, Any]
  evaluations: dict[int, dict[str, np.ndarray]]


def _fail(field: str, value: Any, why: str):
  raise ConfigError(f"config.{field}={value!r}: {why}")


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _tuple(value: Any) -> tuple:
  return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _check_group_config(name: str, group: ml_collections.ConfigDict) -> None:
  where = f"saes.{name}"
  if group.architecture not in ARCHITECTURES:
    _fail(f"{where}.architecture", group.architecture, f"expected one of {sorted(ARCHITECTURES)}")
  uses_k = group.architecture in sae_train.K_ARCHITECTURES
  ks = _tuple(group.k)
  if uses_k and (not ks or not all(_is_int(k) and k >= 1 for k in ks)):
    _fail(f"{where}.k", group.k, f"{group.architecture} needs one or more ints >= 1")
  if not uses_k and ks:
    _fail(f"{where}.k", group.k, f"k applies to {sae_train.K_ARCHITECTURES}; give () for "
          f"{group.architecture}")
  if not _is_int(group.d_sae) or group.d_sae < 1:
    _fail(f"{where}.d_sae", group.d_sae, "must be an int >= 1")
  if uses_k and max(ks) > group.d_sae:
    _fail(f"{where}.k", group.k, f"must not exceed d_sae={group.d_sae}")
  rates = _tuple(group.learning_rate)
  if not rates or not all(rate > 0 for rate in rates):
    _fail(f"{where}.learning_rate", group.learning_rate, "give one or more values > 0")
  coefficients = _tuple(group.sparsity_coefficient)
  if not coefficients or not all(value >= 0 for value in coefficients):
    _fail(f"{where}.sparsity_coefficient", group.sparsity_coefficient,
          "give one or more values >= 0")
  if group.architecture in sae_train.SPARSITY_KEYWORDS and not all(value > 0
                                                                  for value in coefficients):
    _fail(f"{where}.sparsity_coefficient", group.sparsity_coefficient,
          f"{group.architecture} needs a penalty > 0 (L1 for standard, L0 for jumprelu)")
  if not _is_int(group.num_seeds) or group.num_seeds < 1:
    _fail(f"{where}.num_seeds", group.num_seeds, "must be an int >= 1")
  if not group.auxk_coefficient >= 0:
    _fail(f"{where}.auxk_coefficient", group.auxk_coefficient, "must be >= 0 (0: no AuxK)")
  if group.k_anneal_start or group.k_anneal_steps:
    if not uses_k:
      _fail(f"{where}.k_anneal_start", group.k_anneal_start,
            f"k annealing applies to {sae_train.K_ARCHITECTURES}")
    if not (_is_int(group.k_anneal_start) and group.k_anneal_start >= max(ks)
            and group.k_anneal_start <= group.d_sae):
      _fail(f"{where}.k_anneal_start", group.k_anneal_start,
            f"must be an int in [max k={max(ks)}, d_sae={group.d_sae}] when annealing")
    if not _is_int(group.k_anneal_steps) or group.k_anneal_steps < 1:
      _fail(f"{where}.k_anneal_steps", group.k_anneal_steps, "must be an int >= 1 when annealing")


def make_groups(config: ml_collections.ConfigDict) -> list[sae_train.SAEGroup]:
  """The SAE groups of ``config.saes``: each group's ``k`` x ``learning_rate`` x
  ``sparsity_coefficient`` x seeds (``config.seed`` + 0, 1, ...), in that order. ConfigError names
  any field that cannot work."""
  if not len(config.saes):
    _fail("saes", {}, "name at least one group of SAEs")
  groups = []
  for name, group in config.saes.items():
    if not isinstance(group, ml_collections.ConfigDict):
      _fail(f"saes.{name}", group, "expected a group (configs/train_sae.py: sae_group)")
    _check_group_config(name, group)
    uses_k = group.architecture in sae_train.K_ARCHITECTURES
    ks = _tuple(group.k) if uses_k else (None,)
    recipe = sae_train.Recipe(
        architecture=group.architecture,
        k=(group.k_anneal_start or max(ks)) if uses_k else None,
        **{field: group[field] for field in RECIPE_FIELDS})
    members = tuple(
        sae_train.Member(seed=config.seed + seed, learning_rate=float(rate), k=k,
                         sparsity_coefficient=float(coefficient),
                         auxk_coefficient=float(group.auxk_coefficient) if uses_k else 0.0)
        for k, rate, coefficient, seed in itertools.product(
            ks, _tuple(group.learning_rate), _tuple(group.sparsity_coefficient),
            range(group.num_seeds)))
    built = sae_train.SAEGroup(name=name, recipe=recipe, members=members)
    sae_train.check_group(built, error=ConfigError, where=f"config.saes.{name}")
    groups.append(built)
  return groups


def validate(config: ml_collections.ConfigDict, activations: Any = None
             ) -> list[sae_train.SAEGroup]:
  """Checks every field before anything is compiled; returns the SAE groups."""
  training.check_positive(config, ["steps", "batch_size", "log_every", "steps_per_call",
                                   "max_to_keep", "eval_chunk_size", "normalization_rows",
                                   "eval_every", "checkpoint_every"],
                          allow_zero=("eval_every", "checkpoint_every"))
  if config.source not in SOURCES:
    _fail("source", config.source, f"expected one of {SOURCES}")
  if config.normalization_target not in NORMALIZATION_TARGETS:
    _fail("normalization_target", config.normalization_target,
          f"expected one of {NORMALIZATION_TARGETS}")
  if config.source == "arrays":
    if bool(config.arrays.path) == (activations is not None):
      _fail("arrays.path", config.arrays.path, "give either a path or the activations argument "
            "of run(), not both or neither")
    if config.arrays.path and not os.path.exists(config.arrays.path):
      _fail("arrays.path", config.arrays.path, "no such file")
    if config.arrays.num_eval < 0:
      _fail("arrays.num_eval", config.arrays.num_eval, "must be >= 0 (0: a tenth)")
  elif activations is not None:
    _fail("source", config.source, "activations were passed to run(); set config.source='arrays'")
  if config.source == "planted":
    training.check_positive(config, ["planted.d_in", "planted.num_features", "planted.eval_size"])
    if not 0 < config.planted.probability <= 1:
      _fail("planted.probability", config.planted.probability, "must be in (0, 1]")
    if config.planted.noise_std < 0:
      _fail("planted.noise_std", config.planted.noise_std, "must be >= 0")
  if config.planted.target_group and config.planted.target_group not in config.saes:
    _fail("planted.target_group", config.planted.target_group,
          f"no such group; groups: {sorted(config.saes.keys())}")
  if config.source == "model":
    training.check_positive(config, ["model.buffer_size", "model.batch_size"])
    half = config.model.buffer_size // 2
    if config.model.buffer_size % 2 or half % config.batch_size:
      _fail("model.buffer_size", config.model.buffer_size,
            f"must be even, half of it a multiple of config.batch_size={config.batch_size}")
    for field in ("checkpoint_step", "run", "eval_size"):
      if config.model[field] < 0:
        _fail(f"model.{field}", config.model[field], "must be >= 0")
    if config.model.checkpoint and not os.path.isdir(os.path.join(config.model.checkpoint,
                                                                  "checkpoints")):
      _fail("model.checkpoint", config.model.checkpoint,
            "not the workdir of a landscape training run (no checkpoints/ in it)")
  return make_groups(config)


def _checkpointed_run_config(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    _fail("model.checkpoint", workdir, "has no config.json to rebuild its model and data from")
  with open(path) as handle:
    return json.load(handle)


def _check_same(config: ml_collections.ConfigDict, saved: Mapping[str, Any], block: str,
                fields: tuple[str, ...]) -> None:
  """ConfigError naming every field of ``config.<block>`` that differs from the checkpointed run's."""
  differing = []
  for field in fields:
    mine, theirs = config[block][field], saved.get(block, {}).get(field)
    if isinstance(mine, (tuple, list)):
      mine, theirs = list(mine), list(theirs or [])
    if mine != theirs:
      differing.append(f"config.{block}.{field}={config[block][field]!r} (the run has {theirs!r})")
  if differing:
    raise ConfigError(f"config.model.checkpoint={config.model.checkpoint!r} was trained with a "
                      f"different model or data: {', '.join(differing)}; set these to the run's")


def checkpoint_params(config: ml_collections.ConfigDict, model: models.Model,
                      reference: Any) -> tuple[Any, int]:
  """(params of run ``config.model.run`` at ``config.model.checkpoint_step`` (0: the latest) of the
  ``experiments.train`` run in ``config.model.checkpoint``, that step). ``reference`` is the
  model's params (or their shapes) to check the restored ones against."""
  workdir = config.model.checkpoint
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  steps = list(manager.all_steps())
  step = config.model.checkpoint_step or (max(steps) if steps else None)
  if step not in steps:
    _fail("model.checkpoint_step", config.model.checkpoint_step,
          f"{workdir} has checkpoints at steps {sorted(steps)}")
  restored = manager.restore(step, args=ocp.args.StandardRestore())
  manager.close()
  stacked = restored.get("params") if isinstance(restored, Mapping) else None
  if stacked is None:
    _fail("model.checkpoint", workdir, "its checkpoint holds no params")
  num_runs = jax.tree_util.tree_leaves(stacked)[0].shape[0]
  if config.model.run >= num_runs:
    _fail("model.run", config.model.run, f"the run in {workdir} trained {num_runs} run(s)")
  params = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf)[config.model.run], stacked)
  expected = jax.tree_util.tree_map(lambda leaf: (tuple(leaf.shape), str(leaf.dtype)), reference)
  found = jax.tree_util.tree_map(lambda leaf: (tuple(leaf.shape), str(leaf.dtype)), params)
  if expected != found:
    _fail("model.checkpoint", workdir, f"its params {found} do not fit the model {expected}")
  return jax.tree_util.tree_map(jnp.asarray, params), int(step)


def make_source(config: ml_collections.ConfigDict, activations: Any = None
                ) -> sources.ActivationSource:
  """The activation stream the config names (see configs/train_sae.py)."""
  if config.source == "planted":
    planted = planted_lib.planted_dictionary(
        jax.random.PRNGKey(config.planted.seed), d_in=config.planted.d_in,
        num_features=config.planted.num_features, probability=config.planted.probability,
        noise_std=config.planted.noise_std, signed=config.planted.signed)
    source = sources.planted_source(planted, batch_size=config.batch_size,
                                    eval_size=config.planted.eval_size,
                                    eval_key=jax.random.PRNGKey(config.planted.eval_seed))
    return dataclasses.replace(source, info=dict(source.info, features=planted.features_NxD))
  if config.source == "arrays":
    name = config.arrays.path or "arrays"
    acts = np.load(config.arrays.path) if config.arrays.path else activations
    try:
      return sae_sources.array_source(acts, batch_size=config.batch_size, name=name,
                                      num_eval=config.arrays.num_eval or None)
    except BadInputError as error:
      raise ConfigError(f"config.arrays: {error}") from None
  dataset = supervised.make_dataset(config.data)
  model = supervised.make_model(config.model, dataset)
  if config.model.site not in model.site_names:
    _fail("model.site", config.model.site, f"{model.name} has sites {list(model.site_names)}")
  if config.model.eval_set not in dataset.eval_sets:
    _fail("model.eval_set", config.model.eval_set,
          f"dataset {dataset.name!r} has {sorted(dataset.eval_sets)}")
  params = model.init(jax.random.PRNGKey(config.model.init_seed))
  origin = f"initialisation (seed {config.model.init_seed})"
  if config.model.checkpoint:
    saved = _checkpointed_run_config(config.model.checkpoint)
    _check_same(config, saved, "model", ("name", "hidden_sizes", "channels"))
    _check_same(config, saved, "data", tuple(config.data.keys()))
    params, step = checkpoint_params(config, model, params)
    origin = f"{config.model.checkpoint} step {step} run {config.model.run}"
  source = sae_sources.model_source(
      model, params, site=config.model.site, dataset=dataset, batch_size=config.batch_size,
      buffer_size=config.model.buffer_size, model_batch_size=config.model.batch_size,
      eval_set=config.model.eval_set, eval_size=config.model.eval_size or None)
  return dataclasses.replace(source, info=dict(source.info, params=origin))


def _next_stop(step: int, config: ml_collections.ConfigDict) -> int:
  boundaries = [every for every in (config.steps_per_call, config.eval_every,
                                    config.checkpoint_every) if every]
  return min([(step // every + 1) * every for every in boundaries] + [config.steps])


def _due(step: int, every: int, total: int) -> bool:
  return step == total or (every > 0 and step % every == 0)


class _Judge:
  """Evaluates every SAE on the source's evaluation set: the statistics of `evaluate_sae`, the
  planted features' recovery, the model's CE and KL recovered."""

  def __init__(self, groups, source: sources.ActivationSource, chunk_size: int):
    self._groups = groups
    self._source = source
    self._evaluate = sae_train.make_evaluate(groups, chunk_size=chunk_size)
    self._eval_acts = jnp.asarray(source.eval_acts)
    self._downstream = (None if source.downstream is None else jax.jit(source.downstream))
    self.densities: dict[str, np.ndarray] = {}

  def __call__(self, state: sae_train.SAETrainState) -> dict[str, np.ndarray]:
    stats = jax.device_get(self._evaluate(state, self._eval_acts))
    per_group = {name: {metric: getattr(value, metric) for metric in EVAL_METRICS}
                 for name, value in stats.items()}
    joined = sae_train.group_metrics_by_label(self._groups, per_group)
    labels = sae_train.all_labels(self._groups)
    densities = np.concatenate([np.asarray(stats[group.name].density) for group in self._groups])
    self.densities = dict(zip(labels, densities))
    results = {f"eval/{name}": values for name, values in joined.items()}
    saes = sae_train.trained_saes(self._groups, state)
    features = self._source.info.get("features")
    if features is not None:
      recoveries = [planted_lib.feature_recovery(sae.W_dec, features,
                                                 threshold=RECOVERY_THRESHOLD)
                    for sae in saes.values()]
      results["eval/mmcs"] = np.asarray([r.mmcs for r in recoveries])
      results["eval/fraction_above_0.9"] = np.asarray([r.fraction_above for r in recoveries])
    if self._downstream is not None:
      downstream = [jax.device_get(self._downstream(sae)) for sae in saes.values()]
      for field in ("ce_recovered", "kl_recovered", "ce_sae", "kl_sae"):
        results[f"eval/{field}"] = np.asarray([getattr(d, field) for d in downstream], np.float64)
      results["eval/ce_clean"] = np.asarray([downstream[0].ce_clean] * len(downstream))
      results["eval/ce_zero"] = np.asarray([downstream[0].ce_zero] * len(downstream))
    return results


def _save_dir(label: str) -> str:
  return label.replace("/", "__")


def run(config: ml_collections.ConfigDict, workdir: str, *, activations: Any = None,
        command: str | None = None) -> TrainSAEResult:
  """Trains the config's SAEs together over one activation stream; writes ``workdir``'s files
  (module docstring) and returns them. ``activations`` (N, D): the arrays to train on when
  ``config.source`` is "arrays" and no path is given. ``command`` is what the report names as
  having produced the run (the binary passes its command line).

  Raises:
    ConfigError: before compiling, for a field that cannot work (named with its value), or when
      resuming with a config that differs from the run's.
    NonFiniteLossError: at the first chunk in which an SAE's loss went non-finite, naming the step
      and the SAE.
  """
  started = time.perf_counter()
  groups = validate(config, activations)
  source = make_source(config, activations)
  labels = sae_train.all_labels(groups)
  os.makedirs(workdir, exist_ok=True)
  checkpoints = training.Checkpoints(os.path.join(workdir, "checkpoints"),
                                     max_to_keep=config.max_to_keep,
                                     async_save=config.async_checkpoints)
  start_step = checkpoints.latest_step() or 0
  if start_step > config.steps:
    _fail("steps", config.steps, f"the run in {workdir} is already at step {start_step}")
  config_path = os.path.join(workdir, "config.json")
  if start_step and os.path.exists(config_path):
    with open(config_path) as handle:
      training.check_resumed_config(config, json.load(handle))
  # The loop's config.json (what `check_resumed_config` compares): the config and its (empty) grid.
  training.write_json_atomically(config_path, dict(json.loads(config.to_json_best_effort()),
                                                   hparam_grid=[]))

  state = sae_train.init_train_state(jax.random.PRNGKey(config.seed), groups, source,
                                     total_steps=config.steps,
                                     normalize_inputs=config.normalize_inputs,
                                     normalization_rows=config.normalization_rows,
                                     normalization_target=config.normalization_target)
  if start_step:
    state = checkpoints.restore(start_step, state)
    logging.info("resumed from step %d (%s)", start_step, workdir)
  chunk = sae_train.make_train_chunk(groups, source, total_steps=config.steps)
  judge = _Judge(groups, source, config.eval_chunk_size)
  writer = training.MetricsWriter(workdir, num_runs=len(labels), run_labels=labels,
                         resume_step=start_step, tensorboard=config.tensorboard)
  progress = training.Progress(start_step, config.steps)
  evaluations: dict[int, dict[str, np.ndarray]] = {}

  def evaluate(step: int, log: bool = True) -> None:
    evaluations[step] = judge(state)
    if log:
      writer.write(step, evaluations[step])

  step = start_step
  last_saved = start_step or None
  try:
    if step == 0 and config.eval_every:
      evaluate(0)
    while step < config.steps:
      stop = _next_stop(step, config)
      state, per_group = chunk(state, source.arrays, stop - step)
      metrics = sae_train.group_metrics_by_label(groups, jax.device_get(per_group))
      bad = ~np.isfinite(metrics["loss"])
      rows = range(stop - step) if not bad.any() else range(int(np.nonzero(bad.any(1))[0][0]) + 1)
      for index in rows:
        if _due(step + index + 1, config.log_every, config.steps) or bad.any():
          writer.write(step + index + 1, {name: values[index] for name, values in metrics.items()})
      if bad.any():
        index = int(np.nonzero(bad.any(1))[0][0])
        culprits = [label for label, is_bad in zip(labels, bad[index]) if is_bad]
        checkpoints.wait()
        raise training.NonFiniteLossError(
            f"SAE training went non-finite at step {step + index} for {culprits}; the last good "
            f"checkpoint (step {checkpoints.latest_step()}) is untouched in {workdir}/checkpoints")
      step = stop
      progress.report(step, metrics["loss"][-1])
      if _due(step, config.eval_every, config.steps):
        evaluate(step)
      if _due(step, config.checkpoint_every, config.steps):
        checkpoints.save(step, state)
        last_saved = step
    if last_saved != step:
      checkpoints.save(step, state)
    checkpoints.wait()
    if step not in evaluations:
      evaluate(step, log=False)
  finally:
    writer.close()
  checkpoints.close()

  saes = sae_train.trained_saes(groups, state)
  hook_name = source.info.get("site") or source.name
  for label, sae in saes.items():
    save_saelens(sae, os.path.join(workdir, "saes", _save_dir(label)), hook_name=hook_name,
                 metadata=dict(landscape_label=label, source=source.name))
  np.savez(os.path.join(workdir, "densities.npz"), **{_save_dir(label): density
                                                      for label, density in judge.densities.items()})
  summary = _summary(config, groups, source, state, saes, evaluations[step], step,
                     seconds=time.perf_counter() - started)
  training.write_json_atomically(os.path.join(workdir, "summary.json"), summary)
  write_report(workdir, summary, judge.densities, command=command or DEFAULT_COMMAND)
  return TrainSAEResult(state=state, saes=saes, summary=summary, evaluations=evaluations)


def _json_value(value: Any) -> Any:
  array = np.asarray(value)
  return array.tolist() if array.dtype.kind in "fiub" else str(value)


def _verdicts(config: ml_collections.ConfigDict, labels: list[str], final: Mapping[str, Any]
              ) -> list[dict[str, Any]]:
  """The planted target (``config.planted``) judged for each SAE of its group."""
  target = config.planted.target_group
  if not target or "eval/mmcs" not in final:
    return []
  verdicts = []
  for index, label in enumerate(labels):
    if label.split("/")[0] != target:
      continue
    fve, mmcs = float(final["eval/fve"][index]), float(final["eval/mmcs"][index])
    verdicts.append(dict(label=label, fve=fve, mmcs=mmcs, min_fve=config.planted.min_fve,
                         min_mmcs=config.planted.min_mmcs,
                         passed=bool(fve >= config.planted.min_fve and
                                     mmcs >= config.planted.min_mmcs)))
  return verdicts


def _summary(config, groups, source, state, saes, final, step, *, seconds) -> dict[str, Any]:
  labels = sae_train.all_labels(groups)
  per_sae = []
  for index, (label, group, member) in enumerate(
      zip(labels, [g for g in groups for _ in g.members], [m for g in groups for m in g.members])):
    entry = dict(label=label, group=group.name, architecture=group.recipe.architecture,
                 d_sae=group.recipe.d_sae, seed=member.seed, learning_rate=member.learning_rate,
                 k=group.member_k(member) if group.recipe.uses_k else None,
                 sparsity_coefficient=member.sparsity_coefficient,
                 saelens=os.path.join("saes", _save_dir(label)))
    entry.update({name.removeprefix("eval/"): float(values[index])
                  for name, values in final.items()})
    per_sae.append(entry)
  info = {key: _json_value(value) if not isinstance(value, (str, int, float, type(None)))
          else value for key, value in source.info.items() if key != "features"}
  return {
      "step": step, "steps": config.steps, "batch_size": config.batch_size,
      "examples": step * config.batch_size, "labels": labels, "saes": per_sae,
      "groups": {group.name: dict(recipe=dataclasses.asdict(group.recipe),
                                  members=[dataclasses.asdict(m) for m in group.members])
                 for group in groups},
      "source": dict(info, name=source.name, d_in=source.d_in),
      "input_scale": float(state.input_scale),
      "digest": training.params_digest({label: sae for label, sae in saes.items()}),
      "verdicts": _verdicts(config, labels, final),
      "seconds": seconds, "device": _device(),
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
  }


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as handle:
      for line in handle:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _device() -> str:
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  return (f"{jax.device_count()} x {kind} ({_cpu_name()}, {os.cpu_count()} cores), "
          f"jax {jax.__version__}")


GROUP_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
                "tab:pink", "tab:gray", "tab:olive", "tab:cyan")


def figure_frontier(summary: Mapping[str, Any], path: str) -> None:
  """FVE against L0, one point per SAE, coloured by group; the Pareto frontier of the SAEs trained
  together drawn through the points no other SAE beats on both."""
  figure = Figure(figsize=(6, 4.5))
  axis = figure.subplots()
  entries = summary["saes"]
  groups = list(dict.fromkeys(entry["group"] for entry in entries))
  for index, group in enumerate(groups):
    points = [(entry["l0"], entry["fve"]) for entry in entries if entry["group"] == group]
    axis.scatter(*zip(*points), color=GROUP_COLORS[index % len(GROUP_COLORS)], label=group, s=30)
  points = sorted((entry["l0"], entry["fve"]) for entry in entries)
  frontier, best = [], -np.inf
  for l0_value, fve in points:
    if fve > best:
      frontier.append((l0_value, fve))
      best = fve
  axis.plot(*zip(*frontier), color="black", linewidth=1, linestyle="--", label="frontier")
  axis.set_xlabel("L0 (mean nonzero codes per example)")
  axis.set_ylabel("fraction of variance explained")
  axis.set_title("FVE versus L0 of the SAEs trained together")
  axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def figure_densities(densities: Mapping[str, np.ndarray], path: str) -> None:
  """One histogram of log10 feature density per SAE (the dead latents counted in the title)."""
  labels = list(densities)
  columns = min(3, len(labels))
  rows = -(-len(labels) // columns)
  figure = Figure(figsize=(4 * columns, 2.8 * rows))
  axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
  for axis, label in zip(axes, labels):
    histogram = density_histogram(densities[label], bins=40, log10_range=(-6.0, 0.0))
    axis.stairs(histogram.counts, histogram.edges, fill=True, alpha=0.7)
    axis.set_title(f"{label} ({histogram.num_dead} dead)", fontsize=9)
    axis.set_xlabel("log10 feature density")
  for axis in axes[len(labels):]:
    axis.set_visible(False)
  figure.tight_layout()
  figure.savefig(path, dpi=110)


def _cell(value: Any, digits: int = 3) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return str(value)


def markdown(summary: Mapping[str, Any], *, command: str) -> str:
  entries = summary["saes"]
  source = summary["source"]
  has = lambda name: any(name in entry for entry in entries)
  columns = [("SAE", "label", None), ("architecture", "architecture", None), ("F", "d_sae", None),
             ("k", "k", None), ("lr", "learning_rate", 6), ("coef", "sparsity_coefficient", 4),
             ("L0", "l0", 2), ("FVE", "fve", 3), ("NMSE", "nmse", 4),
             ("dead", "dead_fraction", 3)]
  if has("mmcs"):
    columns += [("MMCS", "mmcs", 3), ("> 0.9", "fraction_above_0.9", 3)]
  if has("ce_recovered"):
    columns += [("CE recovered", "ce_recovered", 3), ("KL recovered", "kl_recovered", 3)]
  lines = [
      "# SAE training report", "",
      f"Command: `{command}`", "",
      f"Date: {summary['date']}. Device: {summary['device']}. Wall time: "
      f"{summary['seconds']:.0f} s (this invocation).", "",
      f"Activations: {source['name']} ({source.get('source')}), D = {source['d_in']}; "
      f"{summary['step']} steps of {summary['batch_size']} = {summary['examples']:,} examples; "
      f"input scale {summary['input_scale']:.4g}.", "",
      "Source: " + ", ".join(f"{key}={value}" for key, value in sorted(source.items())
                             if key not in ("name",)), "",
      f"Evaluated on a fixed set of {source.get('eval_size')} examples. FVE is centred "
      "(1 - sum Var(x - x_hat) / sum Var(x)); NMSE is uncentred, per example "
      "(mean ||x - x_hat||^2 / ||x||^2); dead = the fraction of latents that never fired on the "
      "evaluation set." + (" MMCS: the mean over planted features of the largest cosine with a "
                           "decoder row; > 0.9: the fraction of features above 0.9."
                           if has("mmcs") else "")
      + (" CE/KL recovered: (CE_zero - CE_sae) / (CE_zero - CE_clean) with the reconstruction in "
         "place of the site's activation, and the same for KL." if has("ce_recovered") else ""),
      "",
      "| " + " | ".join(title for title, _, _ in columns) + " |",
      "|" + "---|" * len(columns)]
  for entry in entries:
    cells = []
    for _, key, digits in columns:
      value = entry.get(key)
      cells.append(_cell(value, digits) if digits is not None else _cell(value))
    lines.append("| " + " | ".join(cells) + " |")
  if summary["verdicts"]:
    lines += ["", "## Target", ""]
    for verdict in summary["verdicts"]:
      lines.append(f"- {verdict['label']}: FVE {verdict['fve']:.3f} (>= {verdict['min_fve']}), "
                   f"MMCS {verdict['mmcs']:.3f} (>= {verdict['min_mmcs']}): "
                   f"{'met' if verdict['passed'] else 'NOT met'}")
  lines += ["", "## Figures", "",
            "![FVE versus L0](frontier.png)", "",
            "![Feature densities](densities.png)", "",
            "Each SAE is saved in SAELens's layout under `saes/` (normalisation folded in).", ""]
  return "\n".join(lines)


def write_report(workdir: str, summary: Mapping[str, Any], densities: Mapping[str, np.ndarray], *,
                 command: str) -> None:
  """report.md and its figures (frontier.png, densities.png) from the summary and densities."""
  figure_frontier(summary, os.path.join(workdir, "frontier.png"))
  figure_densities(densities, os.path.join(workdir, "densities.png"))
  with open(os.path.join(workdir, "report.md"), "w") as handle:
    handle.write(markdown(summary, command=command))
