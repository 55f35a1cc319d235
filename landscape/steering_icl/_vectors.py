"""Steering vectors at a site: from in-context examples, from a difference of means, and a control.

The vector made from in-context examples is the mean change that N shots cause in a site's
activation at the read-out position (as in function vectors, Todd et al., arXiv 2310.15213, and
task vectors); the difference of means between documents of two concepts is the library's
(`landscape.directions.diff_of_means`). Steering adds ``m * scale * unit(vector)``, with ``scale``
the site's typical activation norm (`activation_scale`), so magnitudes compare across sites.
"""

from __future__ import annotations

import numpy as np

from landscape.sites import BadInputError


def _rows(acts, *, what: str) -> np.ndarray:
  acts = np.asarray(acts, np.float64)
  if acts.ndim < 2 or acts.shape[0] == 0:
    raise BadInputError(f"{what}: activations of shape {acts.shape}; expected (rows, ..., D)")
  acts = acts.reshape(-1, acts.shape[-1])
  if not np.all(np.isfinite(acts)):
    raise BadInputError(f"{what}: {np.sum(~np.isfinite(acts))} non-finite activations")
  return acts


def shot_vector(acts_with_shots_PxD, acts_without_PxD) -> np.ndarray:
  """(D,) the mean over prompts of (activation with N shots) - (the same prompt without them)."""
  with_shots = _rows(acts_with_shots_PxD, what="shot_vector")
  without = _rows(acts_without_PxD, what="shot_vector")
  if with_shots.shape != without.shape:
    raise BadInputError(f"shot_vector: activations with shots {with_shots.shape} and without "
                        f"{without.shape} must pair prompt by prompt")
  return (with_shots - without).mean(0)


def activation_scale(acts_NxD) -> float:
  """The mean L2 norm of a site's activation rows: the unit of steering magnitudes at the site."""
  return float(np.linalg.norm(_rows(acts_NxD, what="activation_scale"), axis=-1).mean())


def unit(vector_D, *, what: str = "vector") -> np.ndarray:
  """``vector_D`` scaled to norm 1; BadInputError naming ``what`` (which vector: its kind, site and
  seed) when its norm is 0 or not finite."""
  vector_D = np.asarray(vector_D, np.float64)
  norm = np.linalg.norm(vector_D)
  if not np.isfinite(norm) or norm == 0:
    raise BadInputError(f"unit: {what} has norm {norm}, so no direction")
  return vector_D / norm


def random_direction(width: int, rng: np.random.Generator) -> np.ndarray:
  """(width,) a uniformly random unit direction: the control for a steering vector (steered at
  the same magnitudes, so of equal norm)."""
  return unit(rng.standard_normal(width))


def cosine(first_D, second_D) -> float:
  return float(unit(first_D) @ unit(second_D))
