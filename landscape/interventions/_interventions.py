"""Interventions at a site: ablate, steer, clamp, scale, per-example masks, backward-only variants.

Each is a small pytree (its arrays are leaves, so it can be built from traced values inside a jitted
step, e.g. a basis refitted during training or a steering magnitude on a schedule) and a function
``act (..., D) -> act (..., D)`` acting on the last axis. Pass them to a forward pass as a mapping
from site name to intervention; the model is not changed. Any plain function ``act -> act`` is an
intervention too, and `BackwardOnly` accepts one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape.sites import Basis
from landscape.sites import BadInputError


def _as_rows(vectors: jax.Array | Basis) -> jax.Array:
  rows = vectors.vectors if isinstance(vectors, Basis) else jnp.asarray(vectors)
  return rows[None] if rows.ndim == 1 else rows


def _broadcast_last(vector_D: jax.Array, act: jax.Array) -> jax.Array:
  """``vector_D`` shaped to add to ``act`` (..., D) without implicit rank promotion."""
  return jnp.reshape(vector_D, (1,) * (act.ndim - 1) + vector_D.shape)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Ablate:
  """Removes the activation's component in the span of orthonormal rows Q, around a reference mean.

  ``act - ((act - mean) Q^T) Q``: with no mean (zero ablation) the result has no component along Q;
  with a mean (mean ablation) its component along Q is the mean's.
  """

  basis_KxD: jax.Array
  mean_D: jax.Array | None = None

  @property
  def width(self) -> int:
    return self.basis_KxD.shape[-1]

  def __call__(self, act: jax.Array) -> jax.Array:
    centred = act if self.mean_D is None else act - _broadcast_last(self.mean_D.astype(act.dtype), act)
    basis = self.basis_KxD.astype(act.dtype)
    return act - (centred @ basis.T) @ basis


def _check_positions(positions: Any, *, what: str) -> tuple[int, ...] | None:
  """``positions`` as a tuple of ints (None stays None); BadInputError naming anything else."""
  if positions is None:
    return None
  is_int = lambda value: (isinstance(value, (int, np.integer))
                          and not isinstance(value, (bool, np.bool_)))
  if is_int(positions):
    return (int(positions),)
  if (not isinstance(positions, (tuple, list, np.ndarray)) or np.ndim(positions) != 1
      or not len(positions) or not all(is_int(position) for position in positions)):
    raise BadInputError(f"{what}: positions={positions!r}; expected None (every position), an int "
                        "or a non-empty sequence of ints indexing axis 1 (the sequence axis)")
  return tuple(int(position) for position in positions)


def _position_indices(positions: tuple[int, ...], act: jax.Array, *, what: str) -> np.ndarray:
  """The non-negative indices of ``positions`` along axis 1 of ``act``; BadInputError naming the
  positions and the sequence length when one is out of range or two name the same position."""
  if act.ndim < 3:
    raise BadInputError(f"{what}: positions={positions} needs an activation (B, T, ..., D) with a "
                        f"sequence axis; got shape {act.shape}")
  length = act.shape[1]
  outside = [position for position in positions if not -length <= position < length]
  if outside:
    raise BadInputError(f"{what}: positions={positions} has {outside} outside [-{length}, "
                        f"{length}) for a sequence of length {length} (activation shape {act.shape})")
  indices = np.asarray([position % length for position in positions])
  if len(set(indices.tolist())) != len(indices):
    raise BadInputError(f"{what}: positions={positions} names a position twice (sequence length "
                        f"{length})")
  return indices


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Steer:
  """Adds ``alpha * vector``: the result minus the input is exactly alpha times v.

  ``positions`` (static): None adds it at every position; otherwise a tuple of indices along axis 1
  (the sequence axis of a (B, T, ..., D) activation, negative from the end) where it is added,
  every other position left bitwise as it was.
  """

  vector_D: jax.Array
  alpha: jax.Array
  positions: tuple[int, ...] | None = dataclasses.field(default=None, metadata=dict(static=True))

  @property
  def width(self) -> int:
    return self.vector_D.shape[-1]

  def __call__(self, act: jax.Array) -> jax.Array:
    shift = jnp.asarray(self.alpha, act.dtype) * self.vector_D.astype(act.dtype)
    if self.positions is None:
      return act + _broadcast_last(shift, act)
    positions = _check_positions(self.positions, what="Steer")
    indices = _position_indices(positions, act, what="Steer")
    return act.at[:, indices].add(_broadcast_last(shift, act))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class SteerExamples:
  """Adds ``alpha * vectors_BxD[b]`` to example b (at every position of a (B, T, D) site)."""

  vectors_BxD: jax.Array
  alpha: jax.Array

  @property
  def width(self) -> int:
    return self.vectors_BxD.shape[-1]

  def __call__(self, act: jax.Array) -> jax.Array:
    if act.shape[0] != self.vectors_BxD.shape[0]:
      raise BadInputError(f"SteerExamples: {self.vectors_BxD.shape[0]} vectors for a batch of "
                          f"{act.shape[0]} (activation shape {act.shape})")
    shift = jnp.asarray(self.alpha, act.dtype) * self.vectors_BxD.astype(act.dtype)
    return act + jnp.reshape(shift, shift.shape[:1] + (1,) * (act.ndim - 2) + shift.shape[1:])


MASK_MODES = ("backward", "forward", "both")


def _check_mask_mode(mode: Any, *, what: str) -> None:
  if mode not in MASK_MODES:
    raise BadInputError(f"{what}: mode={mode!r}; expected one of {list(MASK_MODES)}")


@jax.custom_vjp
def _mask_gradient(mask: jax.Array, act: jax.Array) -> jax.Array:
  """Identity forward (bitwise); the cotangent is multiplied by ``mask`` on the way back."""
  del mask
  return act


def _mask_gradient_forward(mask, act):
  return act, mask


def _mask_gradient_backward(mask, cotangent):
  return jnp.zeros_like(mask), cotangent * mask


_mask_gradient.defvjp(_mask_gradient_forward, _mask_gradient_backward)


@jax.custom_vjp
def _mask_value(mask: jax.Array, act: jax.Array) -> jax.Array:
  """``act * mask`` forward; the cotangent passes back unmasked (straight through)."""
  return act * mask


def _mask_value_forward(mask, act):
  return act * mask, mask


def _mask_value_backward(mask, cotangent):
  return jnp.zeros_like(mask), cotangent


_mask_value.defvjp(_mask_value_forward, _mask_value_backward)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class MaskExamples:
  """Multiplies example b's activation by its own mask, forward, backward only, or both.

  The per-example multiplicative counterpart of `SteerExamples`; ``mode="backward"`` is gradient
  routing (Cloud et al., 2024, "Gradient Routing", arXiv 2410.04332).

  Shapes: ``mask`` is (B,) (one factor per example, every coordinate), (B, D) (one per example and
  coordinate, the same at every position of a (B, T, D) site), or the activation's own shape
  (B, ..., D) (one per position too). A 2-D mask is always (B, D).

  Modes:
    "backward": gradient routing. The forward value is ``act``, bitwise; the gradient reaching the
      site is multiplied by the mask, as through ``mask * act + stop_gradient((1 - mask) * act)``.
      With a 0/1 mask, example b's loss reaches only the parameters behind the coordinates where
      ``mask[b]`` is 1: upstream weights writing a coordinate masked for b get no gradient from b.
    "forward": the value is ``mask * act``; the gradient passes back unmasked (straight through).
    "both": ``mask * act``, an ordinary product: value and gradient both multiplied.
  The mask is held fixed: no gradient reaches it in any mode.
  """

  mask: jax.Array
  mode: str = dataclasses.field(default="backward", metadata=dict(static=True))

  @property
  def width(self) -> int | None:
    return self.mask.shape[-1] if jnp.ndim(self.mask) >= 2 else None

  def __call__(self, act: jax.Array) -> jax.Array:
    _check_mask_mode(self.mode, what="MaskExamples")
    mask = jnp.asarray(self.mask)
    if mask.ndim == 0:
      raise BadInputError(f"MaskExamples: mask has shape {mask.shape}; expected (B,), (B, D) or the "
                          f"activation's shape (B, ..., D), here {act.shape}")
    if mask.shape[0] != act.shape[0]:
      raise BadInputError(f"MaskExamples: mask has shape {mask.shape}, {mask.shape[0]} examples, for "
                          f"a batch of {act.shape[0]} (activation shape {act.shape})")
    if mask.ndim > 2 and mask.shape != act.shape:
      raise BadInputError(f"MaskExamples: mask has shape {mask.shape}; a mask of more than 2 axes "
                          f"must have the activation's shape {act.shape}")
    if mask.ndim == 2 and mask.shape[1] != act.shape[-1]:
      raise BadInputError(f"MaskExamples: mask has shape {mask.shape}, width {mask.shape[1]}, for an "
                          f"activation of width {act.shape[-1]} (shape {act.shape})")
    if mask.ndim == 1:
      mask = jnp.reshape(mask, mask.shape + (1,) * (act.ndim - 1))
    elif mask.ndim == 2:
      mask = jnp.reshape(mask, mask.shape[:1] + (1,) * (act.ndim - 2) + mask.shape[1:])
    mask = jnp.broadcast_to(jax.lax.stop_gradient(mask).astype(act.dtype), act.shape)
    if self.mode == "backward":
      return _mask_gradient(mask, act)
    if self.mode == "forward":
      return _mask_value(mask, act)
    return act * mask


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Clamp:
  """Sets the coordinate along a unit direction d to ``value``: ``act + (value - act.d) d``."""

  direction_D: jax.Array
  value: jax.Array

  @property
  def width(self) -> int:
    return self.direction_D.shape[-1]

  def __call__(self, act: jax.Array) -> jax.Array:
    direction = self.direction_D.astype(act.dtype)
    coordinate = act @ direction
    change = jnp.asarray(self.value, act.dtype) - coordinate
    return act + change[..., None] * _broadcast_last(direction, act)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Scale:
  """Multiplies the coordinate along each orthonormal row k by ``gains_K[k]``; the rest is kept."""

  basis_KxD: jax.Array
  gains_K: jax.Array

  @property
  def width(self) -> int:
    return self.basis_KxD.shape[-1]

  def __call__(self, act: jax.Array) -> jax.Array:
    basis = self.basis_KxD.astype(act.dtype)
    gains = jnp.broadcast_to(jnp.asarray(self.gains_K, act.dtype), basis.shape[:1])
    coordinates = act @ basis.T
    return act + (coordinates * _broadcast_last(gains - 1, coordinates)) @ basis


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _backward_only(function: Callable[..., jax.Array], act: jax.Array, *consts: Any) -> jax.Array:
  del function, consts
  return act


def _backward_only_forward(function, act, *consts):
  del function
  return act, (act, consts)


def _backward_only_backward(function, residuals, cotangent):
  act, consts = residuals
  _, pullback = jax.vjp(lambda a: function(a, *consts), act)
  return (pullback(cotangent)[0],) + tuple(jax.tree_util.tree_map(jnp.zeros_like, consts))


_backward_only.defvjp(_backward_only_forward, _backward_only_backward)


def _is_array(leaf: Any) -> bool:
  return isinstance(leaf, (jax.Array, np.ndarray, np.generic, int, float, bool, complex))


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class BackwardOnly:
  """Leaves the forward value exactly as it is; the gradient flows back as through ``inner``.

  For a linear intervention this projects the gradient reaching the site: ``BackwardOnly(Ablate(Q))``
  removes the gradient's component along Q and nothing else. ``inner`` is any intervention: one of
  this module's pytrees (its arrays may be traced) or a plain function ``act -> act``, closures over
  traced values included. Nothing flows back into ``inner``'s own arrays.

  As a pytree, the array leaves of ``inner`` are children and anything else (a function) is static.
  """

  inner: Any

  @property
  def width(self) -> int | None:
    return getattr(self.inner, "width", None)

  def __call__(self, act: jax.Array) -> jax.Array:
    if not callable(self.inner):
      raise BadInputError(f"BackwardOnly: inner is a {type(self.inner).__name__} "
                          f"({self.inner!r}); pass an intervention or a function act -> act")
    # Closure conversion hoists the traced values ``inner`` closes over (its arrays, or a plain
    # function's captured tracers) into explicit arguments, as custom_vjp requires.
    function, consts = jax.closure_convert(self.inner, act)
    return _backward_only(function, act, *consts)

  def tree_flatten(self):
    leaves, treedef = jax.tree_util.tree_flatten(self.inner)
    arrays = [leaf for leaf in leaves if _is_array(leaf)]
    statics = tuple(None if _is_array(leaf) else leaf for leaf in leaves)
    return arrays, (treedef, statics)

  @classmethod
  def tree_unflatten(cls, aux, arrays):
    treedef, statics = aux
    arrays = iter(arrays)
    return cls(treedef.unflatten([next(arrays) if static is None else static for static in statics]))


@jax.custom_vjp
def reverse_gradient(x: jax.Array, scale: jax.Array) -> jax.Array:
  """Identity forward; the gradient is multiplied by ``-scale`` on the way back."""
  del scale
  return x


def _reverse_forward(x, scale):
  return x, scale


def _reverse_backward(scale, cotangent):
  return -jnp.asarray(scale, cotangent.dtype) * cotangent, jnp.zeros_like(scale)


reverse_gradient.defvjp(_reverse_forward, _reverse_backward)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class ReverseGradient:
  """Gradient reversal at a site (the adversary's trick): identity forward, ``-scale`` backward."""

  scale: jax.Array

  def __call__(self, act: jax.Array) -> jax.Array:
    return reverse_gradient(act, jnp.asarray(self.scale, jnp.float32))


def ablate(basis: jax.Array | Basis, *, mean: jax.Array | None = None,
           backward_only: bool = False) -> Ablate | BackwardOnly:
  """Zero ablation of a basis (rows orthonormal, or a `Basis`), or mean ablation given ``mean``."""
  intervention = Ablate(_as_rows(basis), None if mean is None else jnp.asarray(mean))
  return BackwardOnly(intervention) if backward_only else intervention


def steer(vector: jax.Array, alpha: float | jax.Array, *, positions: Any = None,
          backward_only: bool = False) -> Steer | BackwardOnly:
  """Adds ``alpha * vector`` (alpha may be a schedule's value at this step).

  ``positions``: None (every position), an int or a sequence of ints indexing the sequence axis
  (axis 1) of a (B, T, ..., D) site, negative from the end: ``positions=-1`` steers the last token
  only. Out-of-range or repeated positions raise BadInputError when the site's shape is known (at
  trace time, before compilation); a value of the wrong type raises it here.
  """
  intervention = Steer(jnp.asarray(vector), jnp.asarray(alpha, jnp.float32),
                       _check_positions(positions, what="steer"))
  return BackwardOnly(intervention) if backward_only else intervention


def steer_examples(vectors_BxD: jax.Array, alpha: float | jax.Array, *,
                   backward_only: bool = False) -> SteerExamples | BackwardOnly:
  """Adds ``alpha * vectors_BxD[b]`` to each example b: a steering vector per example."""
  intervention = SteerExamples(jnp.asarray(vectors_BxD), jnp.asarray(alpha, jnp.float32))
  return BackwardOnly(intervention) if backward_only else intervention


def mask_examples(mask: jax.Array, *, mode: str = "both") -> MaskExamples:
  """Multiplies each example's activation by its row of ``mask``: (B,), (B, D) or (B, ..., D).

  ``mode`` is "both" (an ordinary product, the default), "backward" (forward value unchanged, the
  gradient masked: gradient routing, see `route_gradients`) or "forward" (value masked, gradient
  passed straight through). See `MaskExamples`.
  """
  _check_mask_mode(mode, what="mask_examples")
  mask = jnp.asarray(mask)
  if mask.ndim == 0:
    raise BadInputError(f"mask_examples: mask has shape {mask.shape}; expected (B,), (B, D) or the "
                        "activation's shape (B, ..., D)")
  return MaskExamples(mask, mode)


def route_gradients(mask: jax.Array) -> MaskExamples:
  """Gradient routing (Cloud et al., 2024, arXiv 2410.04332) at a site, one mask row per example.

  The forward pass is unchanged, bitwise; the gradient reaching the site from example b is
  multiplied by ``mask[b]`` ((B,), (B, D), or the activation's shape), as through
  ``mask * act + stop_gradient((1 - mask) * act)``. With a 0/1 mask chosen from each example's data
  (its label, its domain), example b trains only the parameters behind its unmasked coordinates.
  ``mask_examples(mask, mode="backward")``.
  """
  return mask_examples(mask, mode="backward")


def clamp(direction: jax.Array, value: float | jax.Array, *, backward_only: bool = False
          ) -> Clamp | BackwardOnly:
  """Clamps the coordinate along a unit ``direction`` (a vector or a one-row `Basis`) to ``value``."""
  rows = _as_rows(direction)
  if rows.shape[0] != 1:
    raise BadInputError(f"clamp: expected one direction, got {rows.shape[0]} (shape {rows.shape})")
  intervention = Clamp(rows[0], jnp.asarray(value, jnp.float32))
  return BackwardOnly(intervention) if backward_only else intervention


def scale(basis: jax.Array | Basis, gains: float | jax.Array, *, backward_only: bool = False
          ) -> Scale | BackwardOnly:
  """Scales the coordinates along a basis's rows by ``gains`` (a scalar or one per row)."""
  intervention = Scale(_as_rows(basis), jnp.asarray(gains, jnp.float32))
  return BackwardOnly(intervention) if backward_only else intervention
