"""Supervised training of a classifier on digits or decoy digits: the foundation's main job.

``run(config, workdir)`` is what ``python -m experiments.train`` calls; a notebook or a test can call
it too. See configs/train.py for the fields.
"""

from __future__ import annotations

import os

import jax
import ml_collections

from landscape import data
from landscape import inspect
from landscape import models
from landscape import objectives
from landscape import training
from landscape.training import ConfigError

MODELS = ("mlp", "cnn")
DATASETS = ("digits", "decoy_digits")


def make_dataset(config: ml_collections.ConfigDict) -> data.Dataset:
  if config.name == "digits":
    return data.digits(split_seed=config.split_seed)
  if config.name == "decoy_digits":
    if config.train_decoy not in data.DECOY_MODES:
      raise ConfigError(f"config.data.train_decoy={config.train_decoy!r}: expected one of "
                        f"{data.DECOY_MODES}")
    corner = config.corner
    if corner != "random":  # a flag gives the corner as a string
      if corner not in [str(choice) for choice in data.DECOY_CORNERS]:
        raise ConfigError(f"config.data.corner={corner!r}: expected 'random' or 0-3")
      corner = int(corner)
    return data.decoy_digits(patch_size=config.patch_size, corner=corner, noise=config.noise,
                             train_decoy=config.train_decoy, split_seed=config.split_seed)
  raise ConfigError(f"config.data.name={config.name!r}: expected one of {DATASETS}")


def make_model(config: ml_collections.ConfigDict, dataset: data.Dataset) -> models.Model:
  image_shape = tuple(dataset.info["image_shape"])
  num_classes = dataset.info["num_classes"]
  if any(size <= 0 for size in config.hidden_sizes):
    raise ConfigError(f"config.model.hidden_sizes={tuple(config.hidden_sizes)}: sizes must be > 0")
  if config.name == "mlp":
    in_features = 1
    for size in image_shape:
      in_features *= size
    return models.mlp(in_features, tuple(config.hidden_sizes), num_classes)
  if config.name == "cnn":
    if any(size <= 0 for size in config.channels):
      raise ConfigError(f"config.model.channels={tuple(config.channels)}: sizes must be > 0")
    return models.cnn(image_shape, tuple(config.channels), tuple(config.hidden_sizes), num_classes)
  raise ConfigError(f"config.model.name={config.name!r}: expected one of {MODELS}")


def run(config: ml_collections.ConfigDict, workdir: str) -> training.TrainResult:
  """Trains ``config.num_seeds`` classifiers; writes metrics.jsonl, summary.json and checkpoints."""
  training.check_optimizer_config(config.optimizer)
  dataset = make_dataset(config.data)
  model = make_model(config.model, dataset)
  optimizer = training.make_optimizer(config.optimizer, total_steps=config.steps)
  result = training.train(config, workdir, model=model,
                          objective=objectives.compose(objectives.cross_entropy()),
                          optimizer=optimizer, dataset=dataset)
  # Every process takes part in the fetch (it gathers from all of them); process 0 writes the file.
  first_run = jax.tree_util.tree_map(lambda leaf: leaf[0], training.fetch(result.state.params))
  if jax.process_index() == 0:
    inspect.write_html(model, os.path.join(workdir, "model.html"),
                       title=f"{model.name} and its sites", params=first_run,
                       example_inputs=dataset.example_batch(2)["inputs"])
  return result
