"""Toy Colors (Ross et al. 2017): 5x5 RGB images with two rules that both predict the label.

Each pixel takes one of four colours. Rule 1: the four corner pixels share a colour. Rule 2: the three
top-middle pixels are all different. In the paper's data, class 0 images satisfy both rules and class
1 images neither, so either rule alone predicts the label perfectly.

Here rule 1 is the shortcut to suppress and rule 2 the rule to learn. Each example carries
``concept`` (the class rule 1 points to: 0 when its corners agree) and ``mask`` (1 on the corner
pixels: the inputs an explanation penalty forbids). With ``rule1="random"`` the corners agree or not
at random, independently of the label (set by rule 2): the out-of-distribution test, and the
oracle's training data.

``generator="reference"`` follows the paper's code (dtak/rrr, rrr/toy_colors.py) draw for draw in
distribution: class 0 copies the bottom-right corner's colour to the other corners and redraws a
random top-middle pixel until the three differ; class 1 redraws one diagonal's corner (top-right or
top-left, with probability 1/2 each) until it differs from the opposite corner, and a random
top-middle pixel until two of the three repeat. Its class-1 images are not uniform over the images
that break the rules (P(top-right = bottom-left) = 1/8, not 1/5). ``input_scale="raw"`` gives the
paper's 0-255 pixel values (colours (255,0,0), (0,255,0), (0,128,255), (128,0,255)), "unit" the same
in [0, 1] (128 as 0.5).
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
RAW_COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 128, 255], [128, 0, 255]], np.float32)
RULE_MODES = ("label", "random")
GENERATORS = ("landscape", "reference")
INPUT_SCALES = ("unit", "raw")


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


def _reference_corners(rng: np.random.Generator, colors: np.ndarray, agree: bool) -> None:
  """The reference's rule 1 on ``colors`` (5, 5) in place: corners agree, or one diagonal differs."""
  if agree:
    for row, col in CORNERS[:3]:
      colors[row, col] = colors[SIZE - 1, SIZE - 1]
    return
  first, second = ((0, SIZE - 1), (SIZE - 1, 0)) if rng.random() < 0.5 else ((0, 0), (SIZE - 1, SIZE - 1))
  while colors[first] == colors[second]:
    colors[first] = rng.integers(len(COLORS))


def _reference_top_middle(rng: np.random.Generator, colors: np.ndarray, all_different: bool) -> None:
  """The reference's rule 2 in place: redraw a random top-middle pixel until the rule holds."""
  while (len(set(colors[0, 1:SIZE - 1].tolist())) == SIZE - 2) != all_different:
    colors[0, 1 + rng.integers(SIZE - 2)] = rng.integers(len(COLORS))


def toy_color_images(labels: np.ndarray, rng: np.random.Generator, *, rule1: str = "label",
                     rule2: str = "label", generator: str = "landscape",
                     input_scale: str = "unit") -> dict[str, np.ndarray]:
  """Images for ``labels`` (0 or 1); each rule follows the label or is random.

  Returns inputs (N, 5, 5, 3) float32, labels, concept (the class rule 1 indicates), rule2_class
  (the class rule 2 indicates) and mask (N, 5, 5, 3), 1 on the corners. ``generator`` and
  ``input_scale``: see the module docstring.
  """
  for name, mode, allowed in (("rule1", rule1, RULE_MODES), ("rule2", rule2, RULE_MODES),
                              ("generator", generator, GENERATORS),
                              ("input_scale", input_scale, INPUT_SCALES)):
    if mode not in allowed:
      raise BadInputError(f"toy colors: {name}={mode!r}; expected one of {allowed}")
  num_examples = len(labels)
  color_index = rng.integers(len(COLORS), size=(num_examples, SIZE, SIZE))
  concept = np.empty(num_examples, np.int32)
  rule2_class = np.empty(num_examples, np.int32)
  for example, label in enumerate(labels):
    corners_agree = (label == 0) if rule1 == "label" else bool(rng.integers(2))
    top_all_different = (label == 0) if rule2 == "label" else bool(rng.integers(2))
    if generator == "reference":
      _reference_corners(rng, color_index[example], corners_agree)
      _reference_top_middle(rng, color_index[example], top_all_different)
    else:
      for (row, col), color in zip(CORNERS, _corner_colors(rng, corners_agree)):
        color_index[example, row, col] = color
      for (row, col), color in zip(TOP_MIDDLE, _top_middle_colors(rng, top_all_different)):
        color_index[example, row, col] = color
    concept[example] = 0 if corners_agree else 1
    rule2_class[example] = 0 if top_all_different else 1
  mask = np.zeros((num_examples, SIZE, SIZE, 3), np.float32)
  for row, col in CORNERS:
    mask[:, row, col, :] = 1.0
  palette = RAW_COLORS if input_scale == "raw" else COLORS
  return dict(inputs=palette[color_index], labels=np.asarray(labels, np.int32), concept=concept,
              rule2_class=rule2_class, mask=mask)


def toy_colors(*, num_train: int = 2000, num_eval: int = 1000, train_rule1: str = "label",
               seed: int = 0, generator: str = "landscape", input_scale: str = "unit") -> Dataset:
  """Toy Colors with rule 1 as the shortcut.

  train_rule1: "label" (both rules predict the label, as in the paper) or "random" (the oracle's
  data: only rule 2 does). Evaluation sets: ``val_id`` and ``id`` (both rules), ``val_ood`` and
  ``ood`` (rule 1 random: only rule 2 predicts the label). ``generator`` and ``input_scale``: see
  the module docstring.
  """
  def make(count: int, stream: int, rule1: str = "label") -> dict[str, np.ndarray]:
    # One stream per set: the evaluation sets do not depend on train_rule1 or num_train.
    rng = np.random.default_rng([seed, stream])
    return toy_color_images(rng.integers(2, size=count).astype(np.int32), rng, rule1=rule1,
                            generator=generator, input_scale=input_scale)

  train = make(num_train, 0, train_rule1)
  eval_sets = {"val_id": make(num_eval, 1), "val_ood": make(num_eval, 2, "random"),
               "id": make(num_eval, 3), "ood": make(num_eval, 4, "random")}
  info = dict(num_classes=2, image_shape=(SIZE, SIZE, 3), train_rule1=train_rule1)
  if (generator, input_scale) != (GENERATORS[0], INPUT_SCALES[0]):
    info.update(generator=generator, input_scale=input_scale)
  return array_dataset(f"toy_colors[{train_rule1}]", train, eval_sets, info=info)
