"""sklearn's bundled 8x8 digits, and decoy digits: a patch whose grey value encodes the label.

Decoy digits follows "Right for the Right Reasons" (Ross et al. 2017): a square patch in a corner
whose value is 1 - 25 * c / 255 for a class c. In training c is the label, so the patch is a perfect
shortcut; at test c is drawn at random, so a model that follows the patch fails. Every example carries
``concept`` (the class the patch encodes) and ``mask`` (1 on the patch's pixels: the inputs an
explanation penalty forbids the model to use).
"""

from __future__ import annotations

import functools

import numpy as np

from landscape.data._dataset import Dataset
from landscape.data._dataset import array_dataset
from landscape.data._dataset import split_indices
from landscape.sites import BadInputError

NUM_CLASSES = 10
IMAGE_SIZE = 8
SPLIT_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
DECOY_MODES = ("label", "random", "none")
DECOY_CORNERS = (0, 1, 2, 3)  # top-left, top-right, bottom-left, bottom-right


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  bunch = load_digits()
  images = (bunch.images / 16.0).astype(np.float32)
  return images, bunch.target.astype(np.int32)


def digits_splits(*, split_seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{"train", "val", "test"} -> (images (N, 8, 8) in [0, 1], labels (N,)); 60/20/20, fixed by seed."""
  images, labels = _load_digits()
  indices = split_indices(len(labels), SPLIT_FRACTIONS, seed=split_seed)
  return {name: (images[index], labels[index]) for name, index in indices.items()}


def digits(*, split_seed: int = 0) -> Dataset:
  """Plain digits: train on the training split; evaluate on ``val`` and ``test``."""
  splits = digits_splits(split_seed=split_seed)
  as_batch = lambda split: dict(inputs=split[0], labels=split[1])
  return array_dataset("digits", as_batch(splits["train"]),
                       {"val": as_batch(splits["val"]), "test": as_batch(splits["test"])},
                       info=dict(num_classes=NUM_CLASSES, image_shape=(IMAGE_SIZE, IMAGE_SIZE)))


def patch_value(concept: np.ndarray) -> np.ndarray:
  """The grey value that encodes class ``concept`` (1 for class 0 down to 30/255 for class 9)."""
  return (1.0 - 25.0 * np.asarray(concept, np.float32) / 255.0).astype(np.float32)


def add_decoy(images: np.ndarray, concept: np.ndarray, rng: np.random.Generator, *,
              patch_size: int, corner: str | int, noise: float) -> tuple[np.ndarray, np.ndarray]:
  """Paints a patch encoding ``concept`` into each image; returns (images, mask).

  corner: "random" (one of the four per image, as in the paper) or 0-3 (top-left, top-right,
  bottom-left, bottom-right). noise: the standard deviation of Gaussian noise on the patch's pixels.
  """
  num_examples, height, width = images.shape
  if not 1 <= patch_size <= min(height, width):
    raise BadInputError(f"decoy digits: patch_size={patch_size} must be in [1, {min(height, width)}]")
  if corner == "random":
    corners = rng.integers(0, 4, size=num_examples)
  elif corner in DECOY_CORNERS:
    corners = np.full(num_examples, corner)
  else:
    raise BadInputError(f"decoy digits: corner={corner!r}; expected 'random' or 0-3")
  rows = np.where(corners >= 2, height - patch_size, 0)
  cols = np.where(corners % 2 == 1, width - patch_size, 0)
  mask = np.zeros_like(images)
  for offset_row in range(patch_size):
    for offset_col in range(patch_size):
      mask[np.arange(num_examples), rows + offset_row, cols + offset_col] = 1.0
  values = patch_value(concept)[:, None, None] + noise * rng.standard_normal(images.shape).astype(np.float32)
  painted = np.where(mask > 0, np.clip(values, 0.0, 1.0), images).astype(np.float32)
  return painted, mask


def decoy_digits(*, patch_size: int = 2, corner: str | int = "random", noise: float = 0.0,
                 train_decoy: str = "label", seed: int = 0, split_seed: int = 0) -> Dataset:
  """Digits with a label-encoding patch in training and a random one at evaluation.

  train_decoy: "label" (the shortcut; the default), "random" (the patch carries no label
    information: the oracle's training data), or "none" (no patch in training).
  Evaluation sets: ``val_id`` and ``id`` (patch encodes the label), ``val_ood`` and ``ood`` (patch
  encodes a random class). Validation sets come from the validation split, the others from the test
  split, so a choice made on validation never sees a test example.
  """
  if train_decoy not in DECOY_MODES:
    raise BadInputError(f"decoy digits: train_decoy={train_decoy!r}; expected one of {DECOY_MODES}")
  splits = digits_splits(split_seed=split_seed)
  paint = functools.partial(add_decoy, patch_size=patch_size, corner=corner, noise=noise)

  def make(split: str, decoy: str, stream: int) -> dict[str, np.ndarray]:
    # Each set draws from its own stream: the evaluation sets do not depend on train_decoy, so
    # runs trained on different data are evaluated on the very same examples.
    rng = np.random.default_rng([seed, stream])
    images, labels = splits[split]
    if decoy == "label":
      concept = labels
    else:
      concept = rng.integers(0, NUM_CLASSES, size=labels.shape).astype(np.int32)
    painted, mask = paint(images, concept, rng)
    if decoy == "none":
      painted = images
    return dict(inputs=painted, labels=labels, concept=concept, mask=mask)

  train = make("train", train_decoy, 0)
  eval_sets = {"val_id": make("val", "label", 1), "val_ood": make("val", "random", 2),
               "id": make("test", "label", 3), "ood": make("test", "random", 4)}
  return array_dataset(f"decoy_digits[{train_decoy}]", train, eval_sets,
                       info=dict(num_classes=NUM_CLASSES, image_shape=(IMAGE_SIZE, IMAGE_SIZE),
                                 patch_size=patch_size, corner=corner, noise=noise,
                                 train_decoy=train_decoy))
