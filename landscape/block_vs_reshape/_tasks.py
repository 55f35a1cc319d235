"""The three shortcut tasks of the flagship experiment, and what every arm needs to know of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from landscape import data
from landscape import models
from landscape import objectives

@dataclasses.dataclass(frozen=True)
class Task:
  """One shortcut-learning problem and what every arm needs to know about its shortcut.

  dataset: training data with the shortcut, batches carrying a concept-independent probe batch
    (``probe_inputs``, ``probe_concept``); eval sets val_id, val_ood, id, ood.
  oracle: the same with the shortcut carrying no label information in training.
  probe: data whose concept is independent of the label (refits and the adversary read it).
  block_sites: the two sites a block may act at (the blocking arms' grid); reshaping arms act at
    the first. The concept's decodability is probed at every site of the model.
  position: the read-out position of a token model, where decodability is probed and the
    adversary reads (None for images). Bases and steering means are fitted over every position:
    the shortcut token's identity lives at its own position as well as where it is read out.
  num_concepts: the concept's number of classes.
  shortcut_keep: a params-shaped mask for ``grad_mask`` (0 on the input weights that read the
    shortcut, None elsewhere).
  explanation: weight -> the task's explanation penalty.
  steps, batch_size: of every arm on this task.
  """

  name: str
  dataset: data.Dataset
  oracle: data.Dataset
  probe: data.Dataset
  model: models.Model
  block_sites: tuple[str, str]
  position: int | None
  num_concepts: int
  shortcut_keep: Any
  explanation: Callable[[objectives.Weight], objectives.Term]
  learning_rate: float
  steps: int
  batch_size: int


def _first_layer_keep(params: Any, path: Sequence[str], rows: np.ndarray) -> Any:
  """None everywhere but ``path``, whose leaf gets a (rows, 1) mask that is 0 on ``rows``."""
  def keep(tree, prefix=()):
    if isinstance(tree, Mapping):
      return {key: keep(value, prefix + (key,)) for key, value in tree.items()}
    if prefix != tuple(path):
      return None
    mask = np.ones((np.shape(tree)[0], 1), np.float32)
    mask[rows] = 0.0
    return mask
  return keep(params)


def _image_rows(mask: np.ndarray) -> np.ndarray:
  """Flat input indices ever covered by the shortcut's mask (any example, any corner)."""
  return np.nonzero(mask.reshape(len(mask), -1).max(axis=0) > 0)[0]


def _decoy_digits(config: ml_collections.ConfigDict) -> Task:
  settings = config.decoy_digits
  make = lambda train_decoy: data.decoy_digits(patch_size=settings.patch_size, train_decoy=train_decoy)
  oracle = make("random")
  model = models.mlp(64, tuple(settings.hidden_sizes), 10)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  training_data = make(settings.train_decoy)
  rows = _image_rows(training_data.arrays["mask"])  # the training data's annotation
  return Task(
      name="decoy_digits",
      dataset=data.with_probe_fields(training_data, oracle), oracle=oracle, probe=oracle,
      model=model,
      block_sites=("hidden_0", "hidden_1"), position=None, num_concepts=10,
      shortcut_keep=_first_layer_keep(params, ("hidden", "0", "kernel"), rows),
      explanation=lambda weight: objectives.explanation_penalty(weight=weight),
      learning_rate=settings.learning_rate, steps=settings.steps or config.steps,
      batch_size=settings.batch_size or config.batch_size)


def _toy_colors(config: ml_collections.ConfigDict) -> Task:
  settings = config.toy_colors
  make = lambda rule1: data.toy_colors(num_train=settings.num_train, num_eval=settings.num_eval,
                                       train_rule1=rule1)
  shortcut, oracle = make("label"), make("random")
  model = models.mlp(75, tuple(settings.hidden_sizes), 2)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  rows = _image_rows(shortcut.arrays["mask"])  # the training data's annotation
  return Task(
      name="toy_colors",
      dataset=data.with_probe_fields(shortcut, oracle), oracle=oracle, probe=oracle, model=model,
      block_sites=("hidden_0", "hidden_1"), position=None, num_concepts=2,
      shortcut_keep=_first_layer_keep(params, ("hidden", "0", "kernel"), rows),
      explanation=lambda weight: objectives.explanation_penalty(weight=weight),
      learning_rate=settings.learning_rate, steps=settings.steps or config.steps,
      batch_size=settings.batch_size or config.batch_size)


def _marker(config: ml_collections.ConfigDict) -> Task:
  settings = config.marker
  make = lambda marker: data.marker_dataset(num_classes=settings.num_classes, seq_len=settings.seq_len,
                                            train_marker=marker, rule_noise=settings.rule_noise,
                                            eval_size=settings.eval_size)
  shortcut, oracle = make("label"), make("random")
  vocab_size = shortcut.info["vocab_size"]
  model = models.gpt(models.GPTConfig(
      vocab_size=vocab_size, max_len=settings.seq_len, d_model=settings.d_model,
      num_layers=2, num_heads=settings.num_heads, positions="learned"))
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  first_marker = settings.num_classes + settings.num_fillers
  marker_rows = np.arange(first_marker, first_marker + settings.num_classes)
  return Task(
      name="marker",
      dataset=data.with_probe_fields(shortcut, oracle), oracle=oracle, probe=oracle, model=model,
      block_sites=("blocks.0.resid_post", "blocks.1.resid_post"), position=-1,
      num_concepts=settings.num_classes,
      shortcut_keep=_first_layer_keep(params, ("token_embed", "embedding"), marker_rows),
      explanation=lambda weight: objectives.site_explanation_penalty("embed", mask_key="mask",
                                                                     weight=weight, name="explanation"),
      learning_rate=settings.learning_rate, steps=settings.steps or config.steps,
      batch_size=settings.batch_size or config.batch_size)


@dataclasses.dataclass(frozen=True)
class TaskKind:
  """One task of the experiment, as data: its name, its report title, and how it is built.

  arm_seconds: about how long one of its arms takes on a 2-core CPU in the default preset
  (measured); it only orders the run's jobs, longest first, so that worker processes finish
  together.
  """

  name: str
  title: str
  build: Callable[[ml_collections.ConfigDict], Task]
  arm_seconds: float


_REGISTRY = (
    TaskKind("decoy_digits", "Decoy digits (8x8; a grey patch in a corner encodes the label)",
             _decoy_digits, arm_seconds=5.5),
    TaskKind("toy_colors", "Toy Colors (5x5x3; rule 1, the corners, is the shortcut)", _toy_colors,
             arm_seconds=6.5),
    TaskKind("marker", "Marker tokens (2-layer GPT copies the first token; a marker token gives "
             "the answer away)", _marker, arm_seconds=22.0),
)
TASK_REGISTRY = {kind.name: kind for kind in _REGISTRY}
TASKS = tuple(TASK_REGISTRY)
TASK_TITLES = {kind.name: kind.title for kind in _REGISTRY}


def build_task(name: str, config: ml_collections.ConfigDict) -> Task:
  """Task ``name`` as ``config`` sets it up."""
  return TASK_REGISTRY[name].build(config)
