"""Toy Colors sample efficiency: label-only examples against explanation-annotated ones.

Ross et al. (2017) report that explanation annotations tied to rule 1 let a model reach 0.80 / 0.90
/ 0.99 accuracy with 70.8x / 28.6x / 6.0x fewer examples than label-only training. Their code
(dtak/rrr, bin/check_color_data_requirements.py) trains two annotated conditions: "pro rule 1",
every pixel but the corners marked irrelevant (rule 1 is the reason), and "anti rule 1", the corners
marked irrelevant (rule 1 is forbidden); accuracy is on test data where both rules hold. Both are
run here, beside label-only training.

Landscape's default (``schedule="steps"``): every training-set size of
``config.sample_efficiency.sizes`` is trained with every seed in one program per condition (the
size is a per-run hyper-parameter: each run draws its batches from its first n examples), for a
fixed number of steps, and the examples needed to reach each threshold are read off the mean
accuracy curve, interpolated linearly in log n between measured sizes (``rule="interpolate"``).
Inputs are in [0, 1] and the penalty is averaged over examples, lambda = 1000 / 255^2 (the paper's
full-data demos' lambda = 1000 with sums, rescaled from 0-255 inputs).

The paper's script differs in every setting, each a field of ``config.sample_efficiency`` here
(the ``rrr_paper`` preset sets them all): 0-255 inputs (``input_scale="raw"``), the reference
generator, a 50-30 MLP with every weight and bias 0.1 x N(0, 1) (``init_scale=0.1``), 1e-4 x
||theta||^2 added to the loss (``l2``), lambda = 10,000 dividing the penalty by the number of
annotated entries in the batch (``explanation_normalize="annotated"``), sizes
``np.logspace(1, 4, 32).astype(int)`` as nested prefixes of one training set of 20,000, int(320,000
/ n) passes over the n examples in order, batch min(256, n) (``schedule="epochs"``), and the first
size whose test accuracy is strictly above the cutoff (``rule="first_above"``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from landscape import analysis
from landscape import data
from landscape import models
from landscape import objectives
from landscape import training
from landscape.block_vs_reshape._schedule import loop_config
from landscape.sites import BadInputError

CONDITIONS = ("label_only", "pro_rule1", "anti_rule1")
PUBLISHED_RATIOS = {0.8: 70.8, 0.9: 28.6, 0.95: 28.5, 0.99: 6.0}
SCHEDULES = ("steps", "epochs")
RULES = ("interpolate", "first_above")
# The settings beyond landscape's original study, at their default values: only those that differ
# enter a run's identity, so runs made before they existed still resume.
DEFAULTS = dict(generator="landscape", input_scale="unit", init_scale=0.0, hidden_sizes=(), l2=0.0,
                explanation_normalize="examples", schedule="steps", rule="interpolate",
                num_train=0, num_eval=0, example_budget=320000, max_batch_size=256)


@dataclasses.dataclass(frozen=True)
class EpochSchedule:
  """The reference's training of one size: ``epochs`` passes over n examples in order.

  ``num_batches`` batches of ``batch_size`` per pass, the last one shorter when batch_size does not
  divide n (``remainder`` examples, 0 when it does); ``steps`` updates in all.
  """
  epochs: int
  batch_size: int
  num_batches: int
  remainder: int
  steps: int


def epoch_schedule(size: int, example_budget: int = 320000, max_batch_size: int = 256
                   ) -> EpochSchedule:
  """int(example_budget / n) passes in batches of min(max_batch_size, n), as the reference script."""
  if size < 1:
    raise BadInputError(f"sample efficiency: training-set size {size}; expected >= 1")
  epochs = int(example_budget / float(size))
  batch_size = min(max_batch_size, size)
  num_batches = math.ceil(size / batch_size)
  return EpochSchedule(epochs=epochs, batch_size=batch_size, num_batches=num_batches,
                       remainder=size % batch_size, steps=epochs * num_batches)


def examples_needed(sizes: np.ndarray, accuracy: np.ndarray, threshold: float) -> float | None:
  """The smallest n where the curve reaches ``threshold`` (log-linear between sizes), or None."""
  above = np.nonzero(accuracy >= threshold)[0]
  if not len(above):
    return None
  first = int(above[0])
  if first == 0:
    return float(sizes[0])
  low, high = accuracy[first - 1], accuracy[first]
  fraction = (threshold - low) / (high - low)
  return float(np.exp(np.log(sizes[first - 1]) + fraction * (np.log(sizes[first]) -
                                                              np.log(sizes[first - 1]))))


def first_size_above(sizes: np.ndarray, accuracy: np.ndarray, threshold: float) -> float | None:
  """The paper figure's rule: the first size whose accuracy is strictly above ``threshold``."""
  above = np.nonzero(accuracy > threshold)[0]
  return float(sizes[int(above[0])]) if len(above) else None


RULE_FUNCTIONS = {"interpolate": examples_needed, "first_above": first_size_above}


def settings_of(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The study's settings, defaults filled in for fields a config predating them lacks."""
  settings = config.sample_efficiency
  values = {name: settings.get(name, default) for name, default in DEFAULTS.items()}
  for name, allowed in (("schedule", SCHEDULES), ("rule", RULES),
                        ("explanation_normalize", ("examples", "annotated")),
                        ("input_scale", ("unit", "raw")), ("generator", ("landscape", "reference"))):
    if values[name] not in allowed:
      raise BadInputError(f"config.sample_efficiency.{name}={values[name]!r}; expected one of "
                          f"{allowed}")
  for name in ("init_scale", "l2"):
    if values[name] < 0:
      raise BadInputError(f"config.sample_efficiency.{name}={values[name]!r}; expected >= 0")
  return values


def _objective(condition: str, weight: float, values: dict[str, Any]) -> objectives.Objective:
  terms = [objectives.cross_entropy()]
  if condition != "label_only":
    terms.append(objectives.explanation_penalty(weight=weight, mask_key=condition,
                                                normalize=values["explanation_normalize"]))
  if values["l2"]:
    terms.append(objectives.l2_penalty(weight=values["l2"]))
  return objectives.compose(*terms)


def _annotated(dataset: data.Dataset) -> data.Dataset:
  rule1_pixels = dataset.arrays["mask"]
  return dataclasses.replace(dataset, arrays=dict(dataset.arrays, anti_rule1=rule1_pixels,
                                                  pro_rule1=1.0 - rule1_pixels))


def _train_epochs(model: models.Model, objective: objectives.Objective,
                  optimizer: optax.GradientTransformation, schedule: EpochSchedule,
                  mask_key: str | None):
  """(key, train arrays of n examples) -> params after the reference's in-order passes."""
  run = objectives.RunView(step=jnp.zeros((), jnp.int32), hparams={}, refreshed={}, term_states={})
  fields = ("inputs", "labels") + ((mask_key,) if mask_key else ())

  def step(carry, batch):
    params, opt_state = carry
    grads = jax.grad(lambda p: objective.loss(model, p, {}, batch=batch, run=run,
                                              rng=jax.random.PRNGKey(0))[0])(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  def train(key, arrays):
    arrays = {name: arrays[name] for name in fields}
    full = schedule.num_batches - (1 if schedule.remainder else 0)
    whole = {name: value[:full * schedule.batch_size].reshape(
        (full, schedule.batch_size) + value.shape[1:]) for name, value in arrays.items()}
    last = {name: value[full * schedule.batch_size:] for name, value in arrays.items()}
    params = model.init(key)

    def epoch(carry, _):
      carry, _ = jax.lax.scan(step, carry, whole)
      if schedule.remainder:
        carry, _ = step(carry, last)
      return carry, None

    (params, _), _ = jax.lax.scan(epoch, (params, optimizer.init(params)), None,
                                  length=schedule.epochs)
    return params

  return train


def _model_and_optimizer(config: ml_collections.ConfigDict, values: dict[str, Any]
                         ) -> tuple[models.Model, optax.GradientTransformation]:
  """The study's MLP (its hidden sizes, else Toy Colors') and Adam at Toy Colors' learning rate."""
  model = models.mlp(75, _hidden_sizes(config, values), 2, init_scale=values["init_scale"] or None)
  return model, optax.adam(config.toy_colors.learning_rate)


def _hidden_sizes(config: ml_collections.ConfigDict, values: dict[str, Any]) -> tuple[int, ...]:
  return tuple(values["hidden_sizes"]) or tuple(config.toy_colors.hidden_sizes)


@dataclasses.dataclass(frozen=True)
class EpochCell:
  """One condition at one training-set size under the reference schedule, every seed vmapped: a
  job of its own (`training.run_jobs`), its accuracies kept in ``{workdir}/epochs/{condition}/{size}
  .json`` beside the settings that produced them."""

  condition: str
  size: int

  def path(self, workdir: str) -> str:
    return os.path.join(workdir, "epochs", self.condition, f"{self.size}.json")


def _epochs_identity(config: ml_collections.ConfigDict, values: dict[str, Any],
                     weight: float) -> dict[str, Any]:
  """Everything a cell's accuracies depend on but its condition and size."""
  return json.loads(json.dumps(dict(
      settings=values, seeds=[config.seed + index for index in range(config.num_seeds)],
      explanation_weight=weight, learning_rate=config.toy_colors.learning_rate,
      hidden_sizes=list(_hidden_sizes(config, values)),
      num_eval=values["num_eval"] or config.toy_colors.num_eval)))


def _read_cell(workdir: str, cell: EpochCell, identity: dict[str, Any]) -> dict[str, list] | None:
  """A finished cell's accuracies ({split: per seed}); None if not run; ConfigError if it was run
  with other settings (never read as this run's)."""
  path = cell.path(workdir)
  if not os.path.exists(path):
    return None
  with open(path) as handle:
    stored = json.load(handle)
  if stored["identity"] != identity:
    differ = sorted(key for key in set(identity) | set(stored["identity"])
                    if identity.get(key) != stored["identity"].get(key))
    raise training.ConfigError(
        f"sample efficiency: {path} was computed with other settings ({', '.join(differ)}: "
        f"{[stored['identity'].get(key) for key in differ]} there, {[identity.get(key) for key in differ]} "
        "now); use a fresh workdir")
  return stored["accuracy"]


# This process's datasets of the reference schedule, one per seed and setting.
_DATASETS_HERE: dict[tuple, data.Dataset] = {}


def _seed_dataset(seed: int, num_train: int, num_eval: int, generator: str,
                  input_scale: str) -> data.Dataset:
  key = (seed, num_train, num_eval, generator, input_scale)
  if key not in _DATASETS_HERE:
    _DATASETS_HERE[key] = _annotated(data.toy_colors(num_train=num_train, num_eval=num_eval,
                                                     seed=seed, generator=generator,
                                                     input_scale=input_scale))
  return _DATASETS_HERE[key]


def train_epoch_cell(config: ml_collections.ConfigDict, workdir: str, sizes: tuple[int, ...],
                     cell: EpochCell) -> None:
  """Trains one cell (every seed in one program) and writes its accuracies (atomically)."""
  values = settings_of(config)
  weight = config.sample_efficiency.explanation_weight
  model, optimizer = _model_and_optimizer(config, values)
  seeds = [config.seed + index for index in range(config.num_seeds)]
  datasets = [_seed_dataset(seed, values["num_train"] or int(max(sizes)),
                            values["num_eval"] or config.toy_colors.num_eval, values["generator"],
                            values["input_scale"]) for seed in seeds]
  prefix = {name: np.stack([d.arrays[name][:cell.size] for d in datasets])
            for name in datasets[0].arrays}
  keys = jnp.stack([jax.random.PRNGKey(seed) for seed in seeds])
  schedule = epoch_schedule(cell.size, values["example_budget"], values["max_batch_size"])
  mask_key = None if cell.condition == "label_only" else cell.condition
  train = jax.jit(jax.vmap(_train_epochs(model, _objective(cell.condition, weight, values),
                                         optimizer, schedule, mask_key)))
  params = train(keys, prefix)

  @jax.jit
  def accuracy(params, inputs, labels):
    logits, _ = model.forward(params, inputs)
    return jnp.mean(jnp.argmax(logits, -1) == labels)

  result = {}
  for split in ("id", "ood"):
    inputs = np.stack([d.eval_sets[split]["inputs"] for d in datasets])
    labels = np.stack([d.eval_sets[split]["labels"] for d in datasets])
    result[split] = np.asarray(jax.vmap(accuracy)(params, inputs, labels), np.float64).tolist()
  logging.info("sample efficiency: %s, %d examples, %d steps of batch %d: id accuracy %s",
               cell.condition, cell.size, schedule.steps, schedule.batch_size,
               np.round(result["id"], 4).tolist())
  os.makedirs(os.path.dirname(cell.path(workdir)), exist_ok=True)
  training.write_json_atomically(cell.path(workdir), dict(
      identity=_epochs_identity(config, values, weight), condition=cell.condition, size=cell.size,
      steps=schedule.steps, batch_size=schedule.batch_size, accuracy=result))


def _run_epochs(config, values, sizes, weight, workdir):
  """The reference schedule: a job per condition and size (`EpochCell`), in ``config.workers``
  worker processes where a CPU allows, resuming the cells an earlier run finished; accuracy per
  seed."""
  size_list = tuple(int(size) for size in sizes)
  cells = [EpochCell(condition, size) for condition in CONDITIONS for size in size_list]
  identity = _epochs_identity(config, values, weight)
  finished = {cell: _read_cell(workdir, cell, identity) for cell in cells}
  # Smaller sizes take more, smaller steps (the same example budget): the longest first.
  todo = sorted((cell for cell, accuracy in finished.items() if accuracy is None),
                key=lambda cell: cell.size)
  try:
    training.run_jobs(functools.partial(train_epoch_cell, config, workdir, size_list), todo,
                      workers=training.resolve_workers(config.get("workers", 1)))
  finally:
    _DATASETS_HERE.clear()
  per_seed = {condition: {"id": [], "ood": []} for condition in CONDITIONS}
  for cell in cells:
    accuracy_by_split = finished[cell] or _read_cell(workdir, cell, identity)
    for split, accuracy in accuracy_by_split.items():
      per_seed[cell.condition][split].append(np.asarray(accuracy, np.float64))
  # (sizes, seeds) per condition and split
  return {condition: {split: np.stack(rows) for split, rows in by_split.items()}
          for condition, by_split in per_seed.items()}


def _run_steps(config, values, sizes, model, optimizer, weight, workdir):
  """Landscape's schedule: every size and seed in one program per condition; accuracy per seed."""
  settings = config.sample_efficiency
  extra = {}
  if (values["generator"], values["input_scale"]) != (DEFAULTS["generator"], DEFAULTS["input_scale"]):
    extra = dict(generator=values["generator"], input_scale=values["input_scale"])
  full = data.toy_colors(num_train=values["num_train"] or int(sizes[-1]),
                         num_eval=values["num_eval"] or config.toy_colors.num_eval, **extra)
  dataset = data.subset_sampler(_annotated(full))
  grid = [{"train_size": float(size)} for size in sizes]
  changed = {name: value for name, value in values.items()
             if value != DEFAULTS[name] and name not in ("rule",)}
  per_seed = {}
  for condition in CONDITIONS:
    # Only what changes the training: thresholds are read off afterwards, and of the Toy Colors
    # settings the study uses the model, learning rate and evaluation sets.
    loop = loop_config(config, settings.steps, config.batch_size, dict(
        condition=condition, sizes=sizes.tolist(),
        explanation_weight=settings.explanation_weight,
        toy_colors={name: config.toy_colors[name] for name in ("hidden_sizes", "learning_rate",
                                                                "num_eval")}, **changed))
    result = training.train(loop, os.path.join(workdir, condition), model=model,
                            objective=_objective(condition, weight, values),
                            optimizer=optimizer, dataset=dataset, hparam_grid=grid)
    runs = result.summary["runs"]
    per_seed[condition] = {}
    for split in ("id", "ood"):
      accuracy = np.asarray(result.summary[f"eval/{split}/accuracy"], np.float64)
      per_seed[condition][split] = np.stack([
          accuracy[[index for index, run in enumerate(runs) if run["train_size"] == size]]
          for size in sizes])
  return per_seed


def _needed(sizes, curves, threshold, rule):
  counts = {condition: RULE_FUNCTIONS[rule](sizes, curves[condition], threshold)
            for condition in CONDITIONS}
  ratios = {f"ratio_{condition}": (counts["label_only"] / counts[condition]
                                   if counts["label_only"] and counts[condition] else None)
            for condition in CONDITIONS[1:]}
  return dict(counts, **ratios)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains every condition over every size and seed; returns the curves and the ratios.

  ``needed[split][threshold]``: examples needed per condition on the mean curve (by the config's
  rule), the ratios label-only / annotated and the published ratio. ``per_seed[split][threshold]``:
  the same counts and ratios for each seed's own curve. ``accuracy[condition][split]``: (sizes,
  seeds) test accuracies.
  """
  settings = config.sample_efficiency
  values = settings_of(config)
  sizes = np.asarray(sorted(settings.sizes), np.float64)
  weight = settings.explanation_weight
  if values["schedule"] == "epochs":
    accuracy = _run_epochs(config, values, sizes, weight, workdir)
  else:
    model, optimizer = _model_and_optimizer(config, values)
    accuracy = _run_steps(config, values, sizes, model, optimizer, weight, workdir)
  curves = {condition: {split: [analysis.mean_interval(row) for row in accuracy[condition][split]]
                        for split in ("id", "ood")} for condition in CONDITIONS}
  needed, per_seed = {}, {}
  for split in ("id", "ood"):
    needed[split], per_seed[split] = {}, {}
    for threshold in settings.thresholds:
      means = {condition: np.asarray([e.mean for e in curves[condition][split]])
               for condition in CONDITIONS}
      needed[split][threshold] = dict(_needed(sizes, means, threshold, values["rule"]),
                                      published_ratio=PUBLISHED_RATIOS.get(threshold))
      per_seed[split][threshold] = [
          _needed(sizes, {condition: accuracy[condition][split][:, seed] for condition in CONDITIONS},
                  threshold, values["rule"])
          for seed in range(accuracy[CONDITIONS[0]][split].shape[1])]
  steps = settings.steps if values["schedule"] == "steps" else {
      int(size): dataclasses.asdict(epoch_schedule(int(size), values["example_budget"],
                                                   values["max_batch_size"])) for size in sizes}
  return dict(sizes=sizes.tolist(), curves=curves, needed=needed, per_seed=per_seed,
              accuracy={c: {s: a.tolist() for s, a in by.items()} for c, by in accuracy.items()},
              steps=steps, explanation_weight=weight, num_seeds=config.num_seeds,
              settings=values)
