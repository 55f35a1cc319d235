"""Attribution: how much of each update lies along each direction, reported without changing it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from landscape.sites import Basis
from landscape.sites import path_string
from landscape.transforms._directions import Directions
from landscape.transforms._directions import DirectionsError
from landscape.transforms._directions import check_leaf
from landscape.transforms._directions import flat_basis
from landscape.transforms._directions import leaf_rows
from landscape.transforms._lowering import as_directions

_HIGHEST = jax.lax.Precision.HIGHEST


class AttributeState(NamedTuple):
  """State of `attribute`.

  directions: the directions' own state (`optax.EmptyState` when fixed).
  metrics: name -> float32 array, see `attribute`.
  rows: with ``rows_arg``, target -> the dictionary rows in use (N, D), replaced whenever new ones
    arrive; None otherwise.
  """

  directions: Any
  metrics: dict[str, jax.Array]
  rows: dict[str, jax.Array] | None = None


def _zero_metrics(directions: Directions) -> dict[str, jax.Array]:
  metrics = {}
  for target, count in directions.counts().items():
    metrics.update({
        f"{target}/magnitude": jnp.zeros((count,), jnp.float32),
        f"{target}/share": jnp.zeros((count,), jnp.float32),
        f"{target}/total_share": jnp.zeros((), jnp.float32),
        f"{target}/norm": jnp.zeros((), jnp.float32),
    })
  return metrics


def _present_leaves(updates: Any) -> dict[str, jax.Array]:
  """"/"-joined path -> leaf, for the leaves present (masked-out ones have none)."""
  return {path_string(keypath): leaf
          for keypath, leaf in jax.tree_util.tree_flatten_with_path(updates)[0]}


def measure(directions: Directions, updates: Any, bases: Mapping[str, jax.Array], *,
            what: str, rows: Mapping[str, jax.Array] | None = None) -> dict[str, jax.Array]:
  """The metrics of `attribute` for ``updates``, each basis of the form taken from ``bases`` and,
  for a dictionary, the rows reported along from ``rows`` (those of ``directions`` when None)."""
  rows = directions.rows if rows is None else rows
  leaves = _present_leaves(updates)
  reported_along_basis = directions.kind != "dictionary"
  norm_squared = {target: jnp.zeros((), jnp.float32) for target in directions.rows}
  squared_N = {target: jnp.zeros((count,), jnp.float32)
               for target, count in directions.counts().items()}
  in_span = {target: jnp.zeros((), jnp.float32) for target in directions.rows}
  gram_DxD = {}
  for along in directions.alongs:
    leaf = leaves.get(along.path)
    if leaf is None:  # masked out
      continue
    target = along.target
    basis = bases[target]
    check_leaf(along, tuple(leaf.shape), tuple(basis.shape), what=what)
    rows_MxD = leaf_rows(leaf, along)
    rows_MxD = rows_MxD.reshape(-1, rows_MxD.shape[-1])
    basis_KxD = flat_basis(basis, rows_MxD.dtype)
    norm_squared[target] = norm_squared[target] + jnp.sum(jnp.square(rows_MxD))
    if reported_along_basis:
      coefficients_MxK = jnp.einsum("md,kd->mk", rows_MxD, basis_KxD, precision=_HIGHEST)
      squared_N[target] = squared_N[target] + jnp.sum(jnp.square(coefficients_MxK), axis=0)
      continue
    dictionary_NxD = rows[target].astype(rows_MxD.dtype)
    num_rows, width = dictionary_NxD.shape
    if num_rows > width:
      # ||U d||^2 = d^T (U^T U) d: one D x D Gram per site, then O(N D^2), never O(M N D).
      gram = jnp.einsum("md,me->de", rows_MxD, rows_MxD, precision=_HIGHEST)
      gram_DxD[target] = gram_DxD[target] + gram if target in gram_DxD else gram
    else:
      squared_N[target] = squared_N[target] + jnp.sum(jnp.square(
          jnp.einsum("md,nd->mn", rows_MxD, dictionary_NxD, precision=_HIGHEST)), axis=0)
      in_span[target] = in_span[target] + jnp.sum(jnp.square(
          jnp.einsum("md,rd->mr", rows_MxD, basis_KxD, precision=_HIGHEST)))
  metrics = _zero_metrics(directions)
  for target in directions.rows:
    if target in gram_DxD:
      gram = gram_DxD[target]
      dictionary_NxD = rows[target].astype(gram.dtype)
      basis_RxD = bases[target].astype(gram.dtype)
      squared_N[target] = jnp.maximum(jnp.einsum("nd,de,ne->n", dictionary_NxD, gram,
                                                 dictionary_NxD, precision=_HIGHEST), 0.0)
      in_span[target] = jnp.einsum("rd,de,re->", basis_RxD, gram, basis_RxD, precision=_HIGHEST)
    if reported_along_basis:
      in_span[target] = jnp.sum(squared_N[target])
      row_norm_squared = jnp.ones_like(squared_N[target])
    else:
      row_norm_squared = jnp.sum(jnp.square(rows[target].astype(jnp.float32)), axis=-1)
    positive = norm_squared[target] > 0
    safe_norm_squared = jnp.where(positive, norm_squared[target], 1.0)
    row_positive = positive & (row_norm_squared > 0)
    metrics.update({
        f"{target}/magnitude": jnp.sqrt(squared_N[target]),
        f"{target}/share": jnp.where(row_positive, squared_N[target] / jnp.where(
            row_positive, safe_norm_squared * row_norm_squared, 1.0), 0.0),
        f"{target}/total_share": jnp.where(
            positive, jnp.clip(in_span[target], 0.0) / safe_norm_squared, 0.0),
        f"{target}/norm": jnp.sqrt(norm_squared[target]),
    })
  return {name: value.astype(jnp.float32) for name, value in metrics.items()}


def _current_rows(directions: Directions, held: Mapping[str, jax.Array], given: Any, *,
                  rows_arg: str) -> dict[str, jax.Array]:
  """``held`` with the rows in ``given`` (the rows extra arg's value, or None) put in; shapes
  checked (when traced too), values trusted."""
  held = dict(held)
  if given is None:
    return held
  name = f"attribute: extra arg {rows_arg!r}"
  if not isinstance(given, Mapping):
    raise DirectionsError(f"{name} must map site -> (N, D) dictionary rows; got "
                          f"{type(given).__name__}")
  for site, rows in given.items():
    if site not in held:
      raise DirectionsError(f"{name} has rows for site {site!r}, which has no dictionary; known: "
                            f"{sorted(held)}")
    if tuple(jnp.shape(rows)) != tuple(held[site].shape):
      raise DirectionsError(f"{name}: site {site!r} has rows of shape {tuple(jnp.shape(rows))}; "
                            f"expected {tuple(held[site].shape)} as at construction")
    held[site] = jnp.asarray(rows).astype(held[site].dtype)
  return held


def attribute(directions: Any, *, rows_arg: str | None = None
              ) -> optax.GradientTransformationExtraArgs:
  """Decomposes each update onto the directions and reports it in ``state.metrics``.

  The update passes through unchanged: the returned updates are the very arrays given (bitwise).

  Metrics (a flat dict name -> float32 array in the state field ``metrics``, where the training
  loop finds it with ``optax.tree_utils.tree_get_all_with_path(opt_state, "metrics")``), per target
  (a site, or a parameter path "/"-joined), summed over every leaf slice linked to it:

  * ``f"{target}/magnitude"`` (K,): sqrt(sum over linked slices of ||U q_k||^2), U being each
    slice's vectors along the linked axis; |<u, q_k>| per parameter; for a dictionary ||U d_k||
    for every row d_k (N,), computed through one D x D Gram matrix when N > D (O(M D^2 + N D^2),
    never O(M N D)).
  * ``f"{target}/share"`` (K,): that squared magnitude over the squared norm of the linked slices
    (for a dictionary, along the unit row d_k / ||d_k||).
  * ``f"{target}/total_share"`` (): the share of the squared norm in the span of the basis (of the
    selected rows for a dictionary; its current span basis when one arrives through the
    directions' ``extra_arg``); for orthonormal directions, the sum of ``share``.
  * ``f"{target}/norm"`` (): the norm of the linked slices.

  Precision of a dictionary's Gram route (N > D): ||U d_k||^2 = d_k^T (U^T U) d_k errs by about
  eps ||U||^2 ||d_k||^2 in absolute terms, so ``share`` is accurate to ~eps but a magnitude near 0
  reads ~sqrt(eps) ||U|| ||d_k|| (about 3e-4 of the norm in float32), not 0: compare squared
  magnitudes, or shares, against zero. The direct route (N <= D) errs by ~eps ||U|| ||d_k||.

  Before the first update the metrics are zeros; masked-out leaves contribute nothing. The mapping
  rule and the precision are those of `project_out`. `label_metrics` turns the vectors into
  per-label scalars for logging.

  A dictionary that changes during training (a live SAE's decoder) is reported along its current
  rows when they arrive through ``rows_arg``: ``update(..., **{rows_arg: {site: rows_NxD}})``. The
  rows are held in the state (``AttributeState.rows``) and used until new ones arrive; any subset
  of the sites may be given, each of the shape given at construction. The span behind
  ``total_share`` is the directions' own (refresh it with `span_refresher` through their
  ``extra_arg``): a new set of rows does not move it.

  Args:
    directions: as `project_out`.
    rows_arg: the keyword through which current dictionary rows (site -> (N, D)) arrive each step;
      None: the rows given at construction, always. Only for `dictionary_directions`.

  Raises:
    DirectionsError: ``rows_arg`` for directions that are not a dictionary's, or equal to the
      directions' ``extra_arg``; at update, rows for an unknown site or of another shape.
  """
  directions = as_directions(directions)
  if rows_arg is not None:
    if directions.kind != "dictionary":
      raise DirectionsError(f"attribute: rows_arg={rows_arg!r} needs dictionary_directions; these "
                            f"are {directions.kind!r} directions, whose rows are their bases (give "
                            f"new ones through the directions' extra_arg)")
    if rows_arg == directions.extra_arg:
      raise DirectionsError(f"attribute: rows_arg={rows_arg!r} is also the directions' extra_arg "
                            f"(the span bases); give the rows their own keyword")

  def init_fn(params):
    directions.check_params(params, what="attribute: params")
    rows = None if rows_arg is None else dict(directions.rows)
    return AttributeState(directions=directions.init(), metrics=_zero_metrics(directions),
                          rows=rows)

  def update_fn(updates, state, params=None, **extra_args):
    del params
    bases, directions_state = directions.current(state.directions, extra_args, what="attribute")
    rows = None
    if rows_arg is not None:
      rows = _current_rows(directions, state.rows, extra_args.get(rows_arg), rows_arg=rows_arg)
    metrics = measure(directions, updates, bases, what="attribute", rows=rows)
    return updates, AttributeState(directions=directions_state, metrics=metrics, rows=rows)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def decompose(directions: Any, updates: Any, *, current: Any = None) -> dict[str, Any]:
  """The coefficients of an update along orthonormal directions.

  Args:
    directions: a per-parameter pytree, `param_directions` or `site_directions` (not a dictionary:
      its rows are not orthonormal, so coefficients along them reconstruct nothing).
    updates: a pytree like the params.
    current: directions to use instead of those built in, in the form of the extra arg.

  Returns:
    Per parameter: path ("/"-joined) -> (K,) coefficients c, with sum_k c_k q_k the leaf's
    component in the span. Sites: site -> list of (`TouchedParameter`, coefficients) in application
    order, the coefficients of shape (*slice shape without the linked axis, K): moving the linked
    axis last, sum_k c[..., k] q_k is the slice's component in the span. Masked leaves are left
    out. Computed in float32 (or wider) with ``Precision.HIGHEST``.
  """
  directions = as_directions(directions)
  if directions.kind == "dictionary":
    raise DirectionsError("decompose: dictionary rows are not orthonormal; use attribute for "
                          "their magnitudes, or site_directions for an orthonormal basis")
  bases = directions.replaced(directions.bases, current, what="decompose")
  leaves = _present_leaves(updates)
  result: dict[str, Any] = {}
  for along in directions.alongs:
    leaf = leaves.get(along.path)
    if leaf is None:
      continue
    basis = bases[along.target]
    check_leaf(along, tuple(leaf.shape), tuple(basis.shape), what="decompose")
    moved = leaf_rows(leaf, along)
    coefficients = jnp.einsum("...d,kd->...k", moved, flat_basis(basis, moved.dtype),
                              precision=_HIGHEST)
    if along.link is None:
      result[along.target] = coefficients[0]
    else:
      result.setdefault(along.target, []).append((along.touched(), coefficients))
  return result


def label_metrics(metrics: Mapping[str, jax.Array],
                  labels: Mapping[str, Basis | Sequence[str]]) -> dict[str, jax.Array]:
  """Per-label scalars for logging.

  Each vector metric ``f"{site}/magnitude"`` or ``f"{site}/share"`` of a site in ``labels`` (a
  `Basis`, whose labels are used, or a sequence of K labels) becomes ``f"{site}/{kind}/{label}"``,
  indexed on the last axis (so (seeds, K) gives (seeds,) per label). A label that already starts
  with ``f"{site}/"`` (the default labels of `make_basis`) is used without repeating the site.
  Every other metric passes through unchanged.
  """
  result = dict(metrics)
  for site, site_labels in labels.items():
    site_labels = tuple(site_labels.labels if isinstance(site_labels, Basis) else site_labels)
    for kind in ("magnitude", "share"):
      name = f"{site}/{kind}"
      if name not in metrics:
        continue
      vector = metrics[name]
      if vector.shape[-1] != len(site_labels):
        raise DirectionsError(f"label_metrics: {len(site_labels)} labels for site {site!r} but "
                              f"{name} has shape {tuple(vector.shape)}")
      del result[name]
      for k, label in enumerate(site_labels):
        label = label[len(site) + 1:] if label.startswith(f"{site}/") else label
        result[f"{site}/{kind}/{label}"] = vector[..., k]
  return result
