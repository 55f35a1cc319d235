"""Toy Colors (Ross et al. 2017): 5x5 RGB images with two rules that both predict the label.

Each pixel takes one of four colours. Rule 1: the four corner pixels share a colour. Rule 2: the three
top-middle pixels are all different. In the paper's data, class 0 images satisfy both rules and class
1 images neither, so either rule alone predicts the label perfectly.

Here rule 1 is the shortcut to suppress and rule 2 the rule to learn. Each example carries
``concept`` (the class rule 1 points to: 0 when its corners agree) and ``mask`` (1 on the corner
pixels: the inputs an explanation penalty forbids). With ``rule1="random"`` the corners agree or not
at random, independently of the label (set by rule 2): the out-of-distribution test, and the
oracle's training data.
"""

from __future__ import annotations

import numpy as np

from landscape.data._dataset import Dataset
from landscape.data._dataset import array_dataset
from landscape.sites import BadInputError

COLORS = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 1.0], [0.5, 0.0, 1.0]], np.float32)
SIZE = 5
CORNERS = ((0, 0), (0, SIZE - 1), (SIZE - 1, 0), (SIZE - 1, SIZE - 1))
TOP_MIDDLE = ((0, 1), (0, 2), (0, 3))
RULE_MODES = ("label", "random")


def _corner_colors(rng: np.random.Generator, agree: bool) -> np.ndarray:
  if agree:
    return np.repeat(rng.integers(len(COLORS)), 4)
  while True:
    colors = rng.integers(len(COLORS), size=4)
    if len(set(colors.tolist())) > 1:
      return colors


def _top_middle_colors(rng: np.random.Generator, all_different: bool) -> np.ndarray:
  while True:
    colors = rng.integers(len(COLORS), size=3)
    if (len(set(colors.tolist())) == 3) == all_different:
      return colors


def toy_color_images(labels: np.ndarray, rng: np.random.Generator, *, rule1: str = "label",
                     rule2: str = "label") -> dict[str, np.ndarray]:
  """Images for ``labels`` (0 or 1); each rule follows the label or is random.

  Returns inputs (N, 5, 5, 3) float32, labels, concept (the class rule 1 indicates), rule2_class
  (the class rule 2 indicates) and mask (N, 5, 5, 3), 1 on the corners.
  """
  for name, mode in (("rule1", rule1), ("rule2", rule2)):
    if mode not in RULE_MODES:
      raise BadInputError(f"toy colors: {name}={mode!r}; expected one of {RULE_MODES}")
  num_examples = len(labels)
  color_index = rng.integers(len(COLORS), size=(num_examples, SIZE, SIZE))
  concept = np.empty(num_examples, np.int32)
  rule2_class = np.empty(num_examples, np.int32)
  for example, label in enumerate(labels):
    corners_agree = (label == 0) if rule1 == "label" else bool(rng.integers(2))
    top_all_different = (label == 0) if rule2 == "label" else bool(rng.integers(2))
    for (row, col), color in zip(CORNERS, _corner_colors(rng, corners_agree)):
      color_index[example, row, col] = color
    for (row, col), color in zip(TOP_MIDDLE, _top_middle_colors(rng, top_all_different)):
      color_index[example, row, col] = color
    concept[example] = 0 if corners_agree else 1
    rule2_class[example] = 0 if top_all_different else 1
  mask = np.zeros((num_examples, SIZE, SIZE, 3), np.float32)
  for row, col in CORNERS:
    mask[:, row, col, :] = 1.0
  return dict(inputs=COLORS[color_index], labels=np.asarray(labels, np.int32), concept=concept,
              rule2_class=rule2_class, mask=mask)


def toy_colors(*, num_train: int = 2000, num_eval: int = 1000, train_rule1: str = "label",
               seed: int = 0) -> Dataset:
  """Toy Colors with rule 1 as the shortcut.

  train_rule1: "label" (both rules predict the label, as in the paper) or "random" (the oracle's
  data: only rule 2 does). Evaluation sets: ``val_id`` and ``id`` (both rules), ``val_ood`` and
  ``ood`` (rule 1 random: only rule 2 predicts the label).
  """
  def make(count: int, stream: int, rule1: str = "label") -> dict[str, np.ndarray]:
    # One stream per set: the evaluation sets do not depend on train_rule1 or num_train.
    rng = np.random.default_rng([seed, stream])
    return toy_color_images(rng.integers(2, size=count).astype(np.int32), rng, rule1=rule1)

  train = make(num_train, 0, train_rule1)
  eval_sets = {"val_id": make(num_eval, 1), "val_ood": make(num_eval, 2, "random"),
               "id": make(num_eval, 3), "ood": make(num_eval, 4, "random")}
  return array_dataset(f"toy_colors[{train_rule1}]", train, eval_sets,
                       info=dict(num_classes=2, image_shape=(SIZE, SIZE, 3), train_rule1=train_rule1))
