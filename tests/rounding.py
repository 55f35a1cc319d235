"""Comparisons across a change of device count or batch split, where float32 rounding may differ.

Another split sums each float32 matmul in another order, so logits agree only to a few ulps. An
accuracy computed from them can then differ exactly on the examples whose two best logits are
within that rounding of each other, and on no other.
"""

import numpy as np

# Relative gap between the two best logits under which the argmax may flip with the summation order
# (float32 epsilon is 1.2e-7; a forward pass of a few layers accumulates tens of ulps).
NEAR_TIE_RTOL = 1e-5


def accuracy_bounds(logits, labels) -> tuple[float, float]:
  """(lowest, highest) accuracy that logits differing by float32 rounding can give on ``labels``."""
  logits = np.asarray(logits, np.float64)
  top_two = np.sort(logits, axis=-1)[..., -2:]
  scale = np.maximum(np.abs(top_two).max(axis=-1), 1.0)
  near_tie = (top_two[..., 1] - top_two[..., 0]) <= NEAR_TIE_RTOL * scale
  correct = np.argmax(logits, -1) == np.asarray(labels)
  return float(np.mean(correct & ~near_tie)), float(np.mean(correct | near_tie))


def assert_accuracy_within_rounding(test, measured, logits, labels, places: int = 5):
  """``measured`` equals the accuracy of ``logits`` up to examples tied within float32 rounding."""
  lowest, highest = accuracy_bounds(logits, labels)
  test.assertBetween(measured, lowest - 10**-places, highest + 10**-places)
