"""Optax transforms that change each update along directions: remove, keep or rescale."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from landscape.sites import path_string
from landscape.transforms._directions import Along
from landscape.transforms._directions import check_leaf
from landscape.transforms._directions import compute_dtype
from landscape.transforms._directions import flat_basis
from landscape.transforms._directions import leaf_rows
from landscape.transforms._directions import resolve_gains
from landscape.transforms._lowering import as_directions

_HIGHEST = jax.lax.Precision.HIGHEST

# The contract every transform here keeps; each public docstring includes it.
_CONTRACT = """
  Mapping rule (site -> parameters). A link ``ParamLink(path, axis, role, index)`` says that axis
  ``axis`` of the leaf at ``path`` has its coordinates in the site's D-dimensional space; for a leaf
  stacked over layers (``index`` not None) only the slice ``leaf[index]`` changes and ``axis``
  counts the axes of that slice. Whatever the role, the transform acts along that axis: with Q the
  (K, D) rows and the axis moved last, every vector u of the slice becomes u (I - Q^T Q) for
  `project_out`, u Q^T Q for `project_onto`, u + u Q^T diag(g - 1) Q for `scale_along`. For a
  "writes" kernel U (D_in, D), axis 1, `project_out` makes the change of the layer's output
  orthogonal to Q for every input; for a "reads" kernel U (D, D_out), axis 0, the change ignores
  the input's component along Q. Per-parameter directions act on the whole leaf, flattened in C
  order. A dictionary acts through an orthonormal basis of the span of its selected rows.

  Order. A leaf touched by several links gets them one after the other: sites in sorted name
  order, then each site's links in the order ``site_links`` gives them (`touched_parameters`).
  Links on different axes commute; links of different sites on the same axis commute when their
  projectors do (orthogonal or nested spans); otherwise the result is exactly orthogonal only to
  the site applied last: put a joint span in one basis.

  Precision. Computed in float32 (or the update's dtype when wider) with ``Precision.HIGHEST``
  matmuls, over all of a leaf's links, and cast back to the update's dtype once: a bf16 update is
  projected with float32 accuracy and only the final rounding leaves a residue along Q.

  Leaves the directions do not touch pass through unchanged (bitwise); leaves replaced by
  `optax.MaskedNode` (inside `optax.masked` or `optax.partition`) are skipped. With ``extra_arg``
  set on the directions, the state holds the bases in use (`HeldDirectionsState`) and an update
  called with that keyword uses and keeps the new ones (shapes checked when traced, values
  trusted); otherwise the state is `optax.EmptyState`.
"""


def rescale_along_last_axis(moved: jax.Array, basis_KxD: jax.Array, span_gain: Any,
                            complement_gain: float) -> jax.Array:
  """complement_gain * x + (x Q^T) diag(span_gain - complement_gain) Q for every row x of ``moved``
  (..., D); ``moved`` and ``basis_KxD`` are in the compute dtype, and so is the result."""
  coefficients = jnp.einsum("...d,kd->...k", moved, basis_KxD, precision=_HIGHEST)
  scale_K = jnp.broadcast_to(jnp.asarray(span_gain, moved.dtype),
                             (basis_KxD.shape[0],)) - complement_gain
  delta = jnp.einsum("...k,k,kd->...d", coefficients, scale_K, basis_KxD, precision=_HIGHEST)
  if complement_gain == 0.0:
    return delta
  if complement_gain == 1.0:
    return moved + delta
  return complement_gain * moved + delta


def rescale_leaf(update: jax.Array, alongs: tuple[Along, ...], bases: Mapping[str, jax.Array],
                 span_gains: Mapping[str, Any], complement_gain: float, *, what: str) -> jax.Array:
  """One leaf of the update with every entry of the form on it applied in order, rounded once."""
  if not alongs:
    return update
  leaf = update.astype(compute_dtype(update.dtype))
  for along in alongs:
    basis = bases[along.target]
    check_leaf(along, tuple(leaf.shape), tuple(basis.shape), what=what)
    moved = leaf_rows(leaf, along)
    out = rescale_along_last_axis(moved, flat_basis(basis, moved.dtype), span_gains[along.target],
                                  complement_gain)
    piece_shape = leaf.shape if along.index is None else leaf.shape[1:]
    out = out.reshape(piece_shape) if along.axis is None else jnp.moveaxis(out, -1, along.axis)
    leaf = out if along.index is None else leaf.at[along.index].set(out)
  return leaf.astype(update.dtype)


def _rescale(directions: Any, gains: Any, complement_gain: float, *,
             name: str) -> optax.GradientTransformationExtraArgs:
  """Scales each update's span component by ``gains`` and its complement by ``complement_gain``."""
  directions = as_directions(directions)
  span_gains = resolve_gains(directions, gains, what=name)

  def init_fn(params):
    directions.check_params(params, what=f"{name}: params")
    return directions.init()

  def update_fn(updates, state, params=None, **extra_args):
    del params
    bases, state = directions.current(state, extra_args, what=name)

    def one_leaf(keypath, update):
      alongs = directions.by_leaf.get(path_string(keypath), ())
      return rescale_leaf(update, alongs, bases, span_gains, complement_gain, what=name)

    return jax.tree_util.tree_map_with_path(one_leaf, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def project_out(directions: Any) -> optax.GradientTransformationExtraArgs:
  """Removes the component of each update in the span of the directions.

  Args:
    directions: a per-parameter pytree ((K, *leaf.shape) or None per leaf), or `Directions` from
      `param_directions`, `site_directions` or `dictionary_directions`.

  Returns:
    A transform whose output, on every leaf the directions touch, is orthogonal to every direction
    (along each linked axis for sites; to the span of the selected rows for a dictionary, up to
    singular values of the selection at or below its ``rtol``), up to the rounding of the update's
    dtype.
  """
  return _rescale(directions, 0.0, 1.0, name="project_out")


def project_onto(directions: Any) -> optax.GradientTransformationExtraArgs:
  """Keeps only the component of each update in the span of the directions.

  Args:
    directions: as `project_out`.

  Returns:
    A transform whose output, on every leaf the directions touch, lies in the span of the
    directions (along each linked axis for sites). Leaves the directions do not touch pass through
    unchanged: wrap with `optax.masked` or `optax.partition` (and `optax.set_to_zero`) to zero them.
  """
  return _rescale(directions, 1.0, 0.0, name="project_onto")


def scale_along(directions: Any, gains: Any) -> optax.GradientTransformationExtraArgs:
  """Multiplies the component of each update along direction k by ``gains[k]``.

  Gains above 1 amplify, below 1 suppress, 0 removes (as `project_out`), negative reverse; the
  orthogonal complement is unchanged: each vector u along a linked axis becomes
  u + u Q^T diag(g - 1) Q.

  Args:
    directions: as `project_out`.
    gains: a scalar or a (K,) array for all targets; or per target: a mapping site -> scalar or
      (K,) for site directions, a mapping parameter path ("/"-joined) -> gain or a pytree mirroring
      the directions for per-parameter ones. Dictionary directions take one scalar per site (the
      whole selected span). A scalar or array may be traced, e.g. injected with
      ``optax.inject_hyperparams(scale_along)(directions=..., gains=0.5)``.
  """
  return _rescale(directions, gains, 1.0, name="scale_along")


for _transform in (project_out, project_onto, scale_along):
  _transform.__doc__ += _CONTRACT
