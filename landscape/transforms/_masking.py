"""Entry-wise gradient masks: the bluntest block, freezing chosen entries of chosen parameters."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from landscape.transforms._directions import DirectionsError


def mask_updates(keep: Any) -> optax.GradientTransformationExtraArgs:
  """Multiplies each update entry-wise by ``keep`` (1 keeps an entry, 0 freezes it).

  Args:
    keep: a pytree mirroring the params, or a prefix of it; each leaf None (keep everything below
      it) or an array of 0/1 (or bools, or a scalar) broadcastable to the shape of every parameter
      below it. ``{"encoder": 0.0, "decoder": None}`` freezes the whole encoder and trains the
      decoder. For example, zeros on the rows of a first-layer kernel that read a shortcut's
      pixels: those weights keep their initial values, and everything downstream of them can still
      learn to use what they pass on.

  Returns:
    A transform whose output is exactly ``update * keep`` (frozen entries are exactly zero, kept
    entries bitwise the update).

  Raises:
    DirectionsError: in ``init``, for a mask that does not broadcast to a parameter below it, or a
      ``keep`` that is not a prefix of the params.
  """
  is_leaf = lambda value: value is None

  def over_subtree(fn, leaf_keep, subtree):
    """fn(leaf_keep, update) on every array of ``subtree`` (a prefix leaf covers its subtree)."""
    return jax.tree_util.tree_map(lambda update: fn(leaf_keep, update), subtree)

  def check(leaf_keep, update):
    if leaf_keep is None:
      return
    shape = np.shape(leaf_keep)
    try:
      np.broadcast_shapes(shape, np.shape(update))
    except ValueError:
      raise DirectionsError(f"mask_updates: mask of shape {shape} does not broadcast to a "
                            f"parameter of shape {np.shape(update)}") from None

  def init_fn(params):
    try:
      jax.tree_util.tree_map(lambda leaf_keep, subtree: over_subtree(check, leaf_keep, subtree),
                             keep, params, is_leaf=is_leaf)
    except ValueError as error:
      if isinstance(error, DirectionsError):
        raise
      raise DirectionsError(f"mask_updates: keep is not a prefix of the params ({error})") from None
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args

    def apply(leaf_keep, update):
      if leaf_keep is None:
        return update
      return update * jnp.broadcast_to(jnp.asarray(leaf_keep, update.dtype), update.shape)

    masked = jax.tree_util.tree_map(
        lambda leaf_keep, subtree: over_subtree(apply, leaf_keep, subtree), keep, updates,
        is_leaf=is_leaf)
    return masked, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
