"""Interventions at a site: ablate, steer, clamp, scale, and their backward-only variants.

Each is a small pytree (its arrays are leaves, so it can be built from traced values inside a jitted
step, e.g. a basis refitted during training or a steering magnitude on a schedule) and a function
``act (..., D) -> act (..., D)`` acting on the last axis. Pass them to a forward pass as a mapping
from site name to intervention; the model is not changed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Steer:
  """Adds ``alpha * vector``: the result minus the input is exactly alpha times v."""

  vector_D: jax.Array
  alpha: jax.Array

  @property
  def width(self) -> int:
    return self.vector_D.shape[-1]

  def __call__(self, act: jax.Array) -> jax.Array:
    shift = jnp.asarray(self.alpha, act.dtype) * self.vector_D.astype(act.dtype)
    return act + _broadcast_last(shift, act)


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


@jax.custom_vjp
def _backward_only(intervention: Any, act: jax.Array) -> jax.Array:
  del intervention
  return act


def _backward_only_forward(intervention, act):
  return act, (intervention, act)


def _backward_only_backward(residuals, cotangent):
  intervention, act = residuals
  _, pullback = jax.vjp(intervention, act)
  return jax.tree_util.tree_map(jnp.zeros_like, intervention), pullback(cotangent)[0]


_backward_only.defvjp(_backward_only_forward, _backward_only_backward)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class BackwardOnly:
  """Leaves the forward value exactly as it is; the gradient flows back as through ``inner``.

  For a linear intervention this projects the gradient reaching the site: ``BackwardOnly(Ablate(Q))``
  removes the gradient's component along Q and nothing else.
  """

  inner: Any

  @property
  def width(self) -> int | None:
    return getattr(self.inner, "width", None)

  def __call__(self, act: jax.Array) -> jax.Array:
    return _backward_only(self.inner, act)


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


def steer(vector: jax.Array, alpha: float | jax.Array, *, backward_only: bool = False
          ) -> Steer | BackwardOnly:
  """Adds ``alpha * vector`` (alpha may be a schedule's value at this step)."""
  intervention = Steer(jnp.asarray(vector), jnp.asarray(alpha, jnp.float32))
  return BackwardOnly(intervention) if backward_only else intervention


def steer_examples(vectors_BxD: jax.Array, alpha: float | jax.Array, *,
                   backward_only: bool = False) -> SteerExamples | BackwardOnly:
  """Adds ``alpha * vectors_BxD[b]`` to each example b: a steering vector per example."""
  intervention = SteerExamples(jnp.asarray(vectors_BxD), jnp.asarray(alpha, jnp.float32))
  return BackwardOnly(intervention) if backward_only else intervention


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
