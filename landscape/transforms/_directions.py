"""Directions that the gradient transforms act along: per parameter leaf, or at sites mapped to leaves.

Three kinds of directions, all accepted by every transform in `landscape.transforms`:

* Parameter space (`param_directions`): a pytree mirroring the params whose leaves are None (leave
  this leaf alone; None may also stand for a whole subtree) or an orthonormal basis of shape
  (K, *leaf.shape) for that leaf alone. The leaf is treated as one vector (flattened in C order) and
  each of the K directions is flattened the same way.
* Activation space (`site_directions`): a `Basis` (K, D) per site, mapped onto the parameters that
  touch the site through the model's ``site_links`` (site -> tuple of `ParamLink`).
* A dictionary and a selection (`dictionary_directions`): N rows of width D per site (N may exceed D;
  rows need be neither unit-norm nor orthogonal, e.g. an SAE decoder) and the selected rows (indices
  or a mask). The transforms act on the span of the selected rows through an orthonormal basis of
  that span, (R, D) with R = min(S, D), held in their state and refreshed on a schedule; the per-step
  cost depends on R and D, never on N.

Mapping rule (site -> parameters). A link ``ParamLink(path, axis, role, index)`` says that axis
``axis`` of the leaf at ``path`` has its coordinates in the site's D-dimensional space; for a leaf
stacked over layers (``index`` not None) only slice ``leaf[index]`` of the leading axis is changed
and ``axis`` counts the axes of that slice. Whatever the role, the transform acts along that axis:
with Q the (K, D) basis and P = Q^T Q, moving ``axis`` last, every vector u of the slice along it
becomes u (I - P) for `project_out`, u P for `project_onto`, and u + u Q^T diag(g - 1) Q for
`scale_along`. The role says what that means for the layer:

* "writes": the leaf's output side lives in the site. For a kernel U of shape (D_in, D), axis 1,
  `project_out` gives U <- U (I - Q^T Q): for every input, the change of the layer's output has no
  component along the directions (a bias (D,) with axis 0 likewise).
* "reads": the leaf's input side lives in the site. For a kernel U of shape (D, D_out), axis 0,
  `project_out` gives U <- (I - Q^T Q) U: the change of the layer ignores the input's component
  along the directions.

Order. A leaf touched by several links (e.g. one that reads site A and writes site B) gets them one
after the other: sites in sorted name order, then each site's links in the order ``site_links``
gives them; `touched_parameters` lists them in exactly this order. Links on different axes act on
different sides of the leaf and commute. Links of different sites on the same axis commute when
their projectors do (orthogonal or nested spans); otherwise the result is exactly orthogonal only to
the site applied last: to remove a joint span, put all its directions in one basis.

Leaves that no direction touches pass through unchanged (bitwise). Leaves replaced by
`optax.MaskedNode` (inside `optax.masked` or `optax.partition`) are skipped.

Precision. Each projection is computed in float32, or in the update's dtype when that is wider (a
float64 update with x64 enabled), with ``Precision.HIGHEST`` matmuls (no TF32 or one-pass bf16 on
accelerators), and the result is cast back to the update's dtype. So a bf16 update is projected with
float32 accuracy, and only the final rounding to bf16 (relative 2^-8 per entry) leaves a residue
along the directions.

Where directions come from, set by ``extra_arg`` on the constructors:

* ``extra_arg=None``: fixed at construction; the state holds nothing (dictionary: the span basis).
* ``extra_arg="bases"`` (any name): the transform's state holds the current directions, initialised
  from the ones given at construction. An update called with that keyword (``tx.update(grads,
  state, params, bases=new)``) uses the new directions and keeps them in its state; an update called
  without it uses the held ones. The values may be traced (inside jit or vmap): their shapes are
  checked when traced, their values are trusted (build them with `make_basis` or `orthonormalize`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from landscape.sites import Basis
from landscape.sites import BasisError
from landscape.sites import check_basis
from landscape.sites import ParamLink
from landscape.sites import BadInputError

Path = tuple[str, ...]
ROLES = ("writes", "reads")
_HIGHEST = jax.lax.Precision.HIGHEST
_ORTHONORMAL_ATOL = 1e-4


class DirectionsError(BadInputError):
  """Directions that do not fit the parameters: a site without links, a missing path, a bad shape."""


class TouchedParameter(NamedTuple):
  """One parameter leaf that a site constraint changes, in the order the transforms apply them."""

  site: str
  path: Path
  role: str
  axis: int
  index: int | None


class HeldDirectionsState(NamedTuple):
  """State of a transform whose directions arrive as extra args.

  directions: target -> the directions in use, (K, D) per site or (K, *leaf.shape) per parameter
    path ("/"-joined); replaced whenever new ones arrive.
  """

  directions: dict[str, jax.Array]


class DictionaryState(NamedTuple):
  """State of a transform acting on the span of selected dictionary rows.

  count: int32, updates so far (drives the refresh schedule).
  bases: site -> (R, D) orthonormal basis of the span of the selected rows, as rows; rows beyond the
    span's rank are zero.
  """

  count: jax.Array
  bases: dict[str, jax.Array]


class DictionarySelection(NamedTuple):
  """A new dictionary and/or selection for one site, passed as an extra arg.

  dictionary_NxD: (N, D), or None to keep the one given at construction.
  selected: int indices (S,) or a bool mask (N,) of the same form and shape as at construction, or
    None to keep the one given at construction.
  """

  dictionary_NxD: jax.Array | None = None
  selected: jax.Array | None = None


def path_string(path: Path) -> str:
  """The "/"-joined form of a key path, used in metric names and messages."""
  return "/".join(path)


def _key_name(entry: Any) -> str:
  for attribute in ("key", "name", "idx"):
    if hasattr(entry, attribute):
      return str(getattr(entry, attribute))
  return str(entry)


def _is_masked(value: Any) -> bool:
  return isinstance(value, optax.MaskedNode)


def _abbreviate(names: Sequence[str], limit: int = 12) -> str:
  names = list(names)
  if len(names) <= limit:
    return ", ".join(names)
  return ", ".join(names[:limit]) + f", ... ({len(names) - limit} more)"


class _Leaves:
  """A pytree's leaves addressed by string key paths; `optax.MaskedNode` subtrees are recorded."""

  def __init__(self, tree: Any):
    flat, self._treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_masked)
    self.leaves = [leaf for _, leaf in flat]
    self.position: dict[Path, int] = {}
    self.masked: set[Path] = set()
    for position, (keypath, leaf) in enumerate(flat):
      path = tuple(_key_name(entry) for entry in keypath)
      if _is_masked(leaf):
        self.masked.add(path)
      else:
        self.position[path] = position

  def has_arrays(self) -> bool:
    return any(hasattr(leaf, "shape") for leaf in self.leaves)

  def find(self, path: Path, *, owner: str) -> int | None:
    """The leaf's position; None when it is masked out; raises when the tree has no such leaf."""
    if path in self.position:
      return self.position[path]
    if any(path[:length] in self.masked for length in range(len(path) + 1)):
      return None
    below = [p for p in self.position if p[:len(path)] == path]
    hint = f" (a subtree of {len(below)} leaves, not a leaf)" if below else ""
    raise DirectionsError(
        f"{owner}: no parameter at path {path_string(path)!r}{hint}; the tree has "
        f"{len(self.position)} leaves: {_abbreviate([path_string(p) for p in self.position])}")

  def tree(self) -> Any:
    return jax.tree_util.tree_unflatten(self._treedef, self.leaves)


def _compute_dtype(dtype: Any) -> jnp.dtype:
  return jnp.promote_types(dtype, jnp.float32)


def _gain_vector(gain: Any, num_directions: int, dtype: Any) -> jax.Array:
  return jnp.broadcast_to(jnp.asarray(gain, dtype), (num_directions,))


def _along_last_axis(moved: jax.Array, basis_KxD: jax.Array, span_gain: Any,
                     complement_gain: float) -> jax.Array:
  """complement_gain * x + (x Q^T) diag(span_gain - complement_gain) Q for every row x of ``moved``.

  ``moved`` (..., D) and ``basis_KxD`` are already in the compute dtype; the result is too.
  """
  coefficients = jnp.einsum("...d,kd->...k", moved, basis_KxD, precision=_HIGHEST)
  scale_K = _gain_vector(span_gain, basis_KxD.shape[0], moved.dtype) - complement_gain
  delta = jnp.einsum("...k,k,kd->...d", coefficients, scale_K, basis_KxD, precision=_HIGHEST)
  if complement_gain == 0.0:
    return delta
  if complement_gain == 1.0:
    return moved + delta
  return complement_gain * moved + delta


def along_axis(x: jax.Array, basis_KxD: jax.Array, axis: int, span_gain: Any,
               complement_gain: float) -> jax.Array:
  """Rescales ``x`` along ``axis``: the span of the rows of ``basis_KxD`` by ``span_gain`` (() or (K,)),
  the orthogonal complement by ``complement_gain``. Same shape and dtype as ``x``."""
  dtype = _compute_dtype(x.dtype)
  moved = jnp.moveaxis(x, axis, -1).astype(dtype)
  out = _along_last_axis(moved, basis_KxD.astype(dtype), span_gain, complement_gain)
  return jnp.moveaxis(out, -1, axis).astype(x.dtype)


def _check_finite(vectors: np.ndarray, *, owner: str) -> None:
  bad = ~np.isfinite(vectors)
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise BasisError(f"{owner}: {int(bad.sum())} non-finite entries in shape {vectors.shape}, "
                     f"first at {where} = {vectors[where]}")


def _check_orthonormal_rows(vectors_KxN: np.ndarray, *, owner: str, shape: tuple[int, ...]) -> None:
  num_directions = vectors_KxN.shape[0]
  gram = vectors_KxN @ vectors_KxN.T
  error = float(np.max(np.abs(gram - np.eye(num_directions)))) if num_directions else 0.0
  if error > _ORTHONORMAL_ATOL:
    raise BasisError(f"{owner}: directions of shape {shape} are not orthonormal (max |V V^T - I| = "
                     f"{error:.3g} > {_ORTHONORMAL_ATOL}); orthonormalise them first "
                     f"(landscape.directions.orthonormalize)")


def _is_concrete(value: Any) -> bool:
  return not isinstance(value, jax.core.Tracer)


# --------------------------------------------------------------------------------------------------
# Links.


def _normalize_links(site_links: Mapping[str, Sequence[ParamLink]], sites: Sequence[str],
                     roles: Sequence[str], *, what: str) -> dict[str, tuple[ParamLink, ...]]:
  """The links of each site, role-filtered, with paths as tuples; raises for sites without links."""
  roles = tuple(roles)
  unknown_roles = sorted(set(roles) - set(ROLES))
  if unknown_roles or not roles:
    raise DirectionsError(f"{what}: roles {roles} must be a non-empty subset of {ROLES}")
  normalized = {}
  for site in sorted(sites):
    links = tuple(site_links.get(site, ()))
    if not links:
      raise DirectionsError(
          f"{what}: site {site!r} has no parameter links, so no parameter can be constrained "
          f"there; site_links has links for {len(site_links)} sites: {_abbreviate(sorted(site_links))}")
    kept = []
    for link in links:
      path = (link.path,) if isinstance(link.path, str) else tuple(str(key) for key in link.path)
      if link.role not in ROLES:
        raise DirectionsError(f"{what}: site {site!r}, link {path_string(path)!r}: role "
                              f"{link.role!r} is not one of {ROLES}")
      if link.index is not None and int(link.index) < 0:
        raise DirectionsError(f"{what}: site {site!r}, link {path_string(path)!r}: negative "
                              f"stack index {link.index}")
      if link.role in roles:
        kept.append(ParamLink(path=path, axis=int(link.axis), role=link.role,
                              index=None if link.index is None else int(link.index)))
    if not kept:
      raise DirectionsError(f"{what}: site {site!r} has {len(links)} links but none with a role "
                            f"in {roles}")
    normalized[site] = tuple(kept)
  return normalized


def _check_link_shape(site: str, link: ParamLink, leaf_shape: tuple[int, ...], width: int, *,
                      what: str, basis_shape: tuple[int, ...]) -> None:
  """Raises unless the link's slice of a leaf of ``leaf_shape`` has size ``width`` on its axis."""
  name = (f"{what}: site {site!r}, link {path_string(link.path)!r} (role {link.role}, axis "
          f"{link.axis}, index {link.index})")
  shape = tuple(leaf_shape)
  if link.index is not None:
    if not shape or link.index >= shape[0]:
      raise DirectionsError(f"{name}: stack index {link.index} out of range for a parameter of "
                            f"shape {shape}")
    shape = shape[1:]
  if not -len(shape) <= link.axis < len(shape):
    raise DirectionsError(f"{name}: axis {link.axis} out of range for a "
                          f"{'slice' if link.index is not None else 'parameter'} of shape {shape}")
  if shape[link.axis] != width:
    raise DirectionsError(
        f"{name}: the parameter{'s slice' if link.index is not None else ''} of shape {shape} has "
        f"size {shape[link.axis]} on axis {link.axis}, but the basis at the site has width {width} "
        f"(shape {basis_shape})")


def _check_site_tree(tree: Any, links: Mapping[str, tuple[ParamLink, ...]],
                     basis_shapes: Mapping[str, tuple[int, ...]], *, what: str) -> None:
  leaves = _Leaves(tree)
  if not leaves.has_arrays():
    return
  for site, site_links in links.items():
    for link in site_links:
      position = leaves.find(link.path, owner=f"{what}: site {site!r}")
      if position is None:
        continue
      _check_link_shape(site, link, leaves.leaves[position].shape, basis_shapes[site][-1],
                        what=what, basis_shape=basis_shapes[site])


def touched_parameters(site_links: Mapping[str, Sequence[ParamLink]],
                       sites: Sequence[str] | None = None, *,
                       roles: Sequence[str] = ROLES) -> list[TouchedParameter]:
  """Every parameter a constraint at ``sites`` changes, in the order the transforms apply them.

  Args:
    site_links: the model's site -> links.
    sites: the constrained sites; all sites with links when None.
    roles: the roles constrained ("writes", "reads" or both).

  Returns:
    (site, path, role, axis, index) tuples: sites in sorted order, then each site's links in order.
    Raises `DirectionsError` for a site without links (with these roles).
  """
  sites = sorted(site_links) if sites is None else list(sites)
  links = _normalize_links(site_links, sites, roles, what="touched_parameters")
  return [TouchedParameter(site, link.path, link.role, link.axis, link.index)
          for site, site_links_ in links.items() for link in site_links_]


def _apply_sites(updates: Any, links: Mapping[str, tuple[ParamLink, ...]],
                 bases: Mapping[str, jax.Array], span_gains: Mapping[str, Any],
                 complement_gain: float, *, what: str) -> Any:
  leaves = _Leaves(updates)
  # A leaf touched by several links stays in the compute dtype until the last one: one rounding.
  working: dict[int, jax.Array] = {}
  for site in sorted(bases):
    basis = bases[site]
    for link in links[site]:
      position = leaves.find(link.path, owner=f"{what}: site {site!r}")
      if position is None:
        continue
      leaf = working.get(position)
      if leaf is None:
        leaf = leaves.leaves[position]
        leaf = leaf.astype(_compute_dtype(leaf.dtype))
      _check_link_shape(site, link, leaf.shape, basis.shape[-1], what=what,
                        basis_shape=tuple(basis.shape))
      if link.index is None:
        leaf = along_axis(leaf, basis, link.axis, span_gains[site], complement_gain)
      else:
        piece = along_axis(leaf[link.index], basis, link.axis, span_gains[site], complement_gain)
        leaf = leaf.at[link.index].set(piece)
      working[position] = leaf
  for position, leaf in working.items():
    leaves.leaves[position] = leaf.astype(leaves.leaves[position].dtype)
  return leaves.tree()


def _link_moved(leaf: jax.Array, link: ParamLink) -> jax.Array:
  """The link's slice of ``leaf`` with the site axis moved last, (..., D), in the compute dtype."""
  piece = leaf if link.index is None else leaf[link.index]
  return jnp.moveaxis(piece, link.axis, -1).astype(_compute_dtype(piece.dtype))


def _site_rows(updates: Any, links: Mapping[str, tuple[ParamLink, ...]], site: str, *,
               what: str, flatten: bool = True) -> list[tuple[ParamLink, jax.Array]]:
  """(link, the link's slice as rows (M, D), or (..., D) unflattened) for the site's unmasked links."""
  leaves = _Leaves(updates)
  rows = []
  for link in links[site]:
    position = leaves.find(link.path, owner=f"{what}: site {site!r}")
    if position is not None:
      moved = _link_moved(leaves.leaves[position], link)
      rows.append((link, moved.reshape(-1, moved.shape[-1]) if flatten else moved))
  return rows


def _shares(squared_K: jax.Array, norm_squared: jax.Array, site: str) -> dict[str, jax.Array]:
  """The metrics of one target from per-direction squared magnitudes and the squared norm."""
  positive = norm_squared > 0
  safe_norm_squared = jnp.where(positive, norm_squared, 1.0)
  return {
      f"{site}/magnitude": jnp.sqrt(squared_K).astype(jnp.float32),
      f"{site}/share": jnp.where(positive, squared_K / safe_norm_squared, 0.0).astype(jnp.float32),
      f"{site}/total_share": jnp.where(positive, jnp.sum(squared_K) / safe_norm_squared,
                                       0.0).astype(jnp.float32),
      f"{site}/norm": jnp.sqrt(norm_squared).astype(jnp.float32),
  }


def _zero_metrics(name: str, num_directions: int) -> dict[str, jax.Array]:
  return {
      f"{name}/magnitude": jnp.zeros((num_directions,), jnp.float32),
      f"{name}/share": jnp.zeros((num_directions,), jnp.float32),
      f"{name}/total_share": jnp.zeros((), jnp.float32),
      f"{name}/norm": jnp.zeros((), jnp.float32),
  }


# --------------------------------------------------------------------------------------------------
# Gains.


def _is_uniform_gain(gains: Any) -> bool:
  return isinstance(gains, (int, float)) or hasattr(gains, "shape")


def _check_gain_shape(gain: Any, num_directions: int, *, owner: str, allow_vector: bool) -> None:
  shape = tuple(jnp.shape(gain))
  if shape == ():
    return
  if allow_vector and shape == (num_directions,):
    return
  expected = f"() or ({num_directions},)" if allow_vector else "() (a scalar)"
  raise DirectionsError(f"{owner}: gain of shape {shape}; expected {expected}")


def _resolve_named_gains(gains: Any, counts: Mapping[str, int], *, what: str, kind: str,
                         allow_vector: bool) -> dict[str, Any]:
  """gains (scalar, (K,), or a mapping name -> scalar or (K,)) -> name -> gain, shapes checked."""
  if gains is None:
    raise DirectionsError(f"{what}: gains must be given (a scalar, a (K,) array or a mapping)")
  if _is_uniform_gain(gains):
    resolved = {name: gains for name in counts}
  elif isinstance(gains, Mapping):
    missing = sorted(set(counts) - set(gains))
    unknown = sorted(set(gains) - set(counts))
    if missing or unknown:
      raise DirectionsError(f"{what}: gains per {kind} must name exactly the {kind}s "
                            f"{sorted(counts)}; missing {missing}, unknown {unknown}")
    resolved = {name: gains[name] for name in counts}
  else:
    raise DirectionsError(f"{what}: gains of type {type(gains).__name__}; expected a scalar, a "
                          f"(K,) array or a mapping {kind} -> gain")
  for name, gain in resolved.items():
    _check_gain_shape(gain, counts[name], owner=f"{what}: {kind} {name!r}",
                      allow_vector=allow_vector)
  return resolved


# --------------------------------------------------------------------------------------------------
# The three kinds of directions.


class Directions:
  """What the transforms need from directions; built by `param_directions`, `site_directions` or
  `dictionary_directions`. Not a pytree: it is a fixed, validated description closed over by a
  transform (new values arrive through ``extra_arg``)."""

  extra_arg: str | None

  def counts(self) -> dict[str, int]:
    """target name -> number of directions reported per target (metric vector length)."""
    raise NotImplementedError

  def check_tree(self, tree: Any, *, what: str) -> None:
    """Raises unless every leaf the directions touch exists in ``tree`` with a fitting shape."""
    raise NotImplementedError

  def init(self) -> Any:
    raise NotImplementedError

  def current(self, state: Any, extra_args: Mapping[str, Any], *,
              what: str) -> tuple[dict[str, jax.Array], Any]:
    """(target -> orthonormal rows to use this step, the new state)."""
    raise NotImplementedError

  def resolve_gains(self, gains: Any, *, what: str) -> dict[str, Any]:
    raise NotImplementedError

  def apply(self, updates: Any, current: Mapping[str, jax.Array], span_gains: Mapping[str, Any],
            complement_gain: float, *, what: str) -> Any:
    raise NotImplementedError

  def measure(self, updates: Any, current: Mapping[str, jax.Array],
              extra_args: Mapping[str, Any], *, what: str) -> dict[str, jax.Array]:
    raise NotImplementedError

  def zero_metrics(self) -> dict[str, jax.Array]:
    metrics = {}
    for name, count in self.counts().items():
      metrics.update(_zero_metrics(name, count))
    return metrics


@dataclasses.dataclass(frozen=True, eq=False)
class ParamDirections(Directions):
  """Orthonormal directions per parameter leaf (see `param_directions`).

  Attributes:
    vectors: parameter path -> (K, *leaf.shape), orthonormal as K flattened rows.
    extra_arg: the keyword through which new directions arrive, or None when fixed.
  """

  vectors: dict[Path, jax.Array]
  extra_arg: str | None = None

  def counts(self) -> dict[str, int]:
    return {path_string(path): int(vectors.shape[0]) for path, vectors in self.vectors.items()}

  def check_tree(self, tree: Any, *, what: str) -> None:
    leaves = _Leaves(tree)
    if not leaves.has_arrays():
      return
    for path, vectors in self.vectors.items():
      position = leaves.find(path, owner=f"{what}: directions")
      if position is None:
        continue
      leaf_shape = tuple(leaves.leaves[position].shape)
      if tuple(vectors.shape[1:]) != leaf_shape:
        raise DirectionsError(f"{what}: directions for parameter {path_string(path)!r} have shape "
                              f"{tuple(vectors.shape)}; expected (K, *{leaf_shape})")

  def init(self) -> Any:
    if self.extra_arg is None:
      return optax.EmptyState()
    return HeldDirectionsState({path_string(path): jnp.asarray(vectors)
                                for path, vectors in self.vectors.items()})

  def current(self, state, extra_args, *, what):
    if self.extra_arg is None:
      return {path_string(path): vectors for path, vectors in self.vectors.items()}, state
    held = dict(state.directions)
    given = extra_args.get(self.extra_arg)
    if given is not None:
      known = {path_string(path): path for path in self.vectors}
      for keypath, vectors in jax.tree_util.tree_flatten_with_path(
          given, is_leaf=lambda value: value is None)[0]:
        if vectors is None:
          continue
        name = path_string(tuple(_key_name(entry) for entry in keypath))
        if name not in known:
          raise DirectionsError(f"{what}: extra arg {self.extra_arg!r} has directions for "
                                f"{name!r}, which has none at construction; known: "
                                f"{_abbreviate(sorted(known))}")
        if tuple(jnp.shape(vectors)) != tuple(held[name].shape):
          raise DirectionsError(f"{what}: extra arg {self.extra_arg!r}: directions for parameter "
                                f"{name!r} have shape {tuple(jnp.shape(vectors))}; expected "
                                f"{tuple(held[name].shape)}")
        held[name] = jnp.asarray(vectors).astype(held[name].dtype)
    return held, HeldDirectionsState(held)

  def resolve_gains(self, gains, *, what):
    counts = self.counts()
    if not _is_uniform_gain(gains) and gains is not None and not (
        isinstance(gains, Mapping) and set(gains) <= set(counts)):
      # A pytree mirroring the directions (None where they are None).
      flat = jax.tree_util.tree_flatten_with_path(gains, is_leaf=lambda value: value is None)[0]
      gains = {path_string(tuple(_key_name(entry) for entry in keypath)): gain
               for keypath, gain in flat if gain is not None}
    return _resolve_named_gains(gains, counts, what=what, kind="parameter", allow_vector=True)

  def apply(self, updates, current, span_gains, complement_gain, *, what):
    leaves = _Leaves(updates)
    for path in self.vectors:
      position = leaves.find(path, owner=f"{what}: directions")
      if position is None:
        continue
      leaf = leaves.leaves[position]
      basis = current[path_string(path)]
      if tuple(basis.shape[1:]) != tuple(leaf.shape):
        raise DirectionsError(f"{what}: directions for parameter {path_string(path)!r} have shape "
                              f"{tuple(basis.shape)}; the update has shape {tuple(leaf.shape)}")
      flat = along_axis(leaf.reshape(-1), basis.reshape(basis.shape[0], -1), 0,
                        span_gains[path_string(path)], complement_gain)
      leaves.leaves[position] = flat.reshape(leaf.shape)
    return leaves.tree()

  def coefficients(self, updates, current, *, what) -> dict[str, jax.Array]:
    leaves = _Leaves(updates)
    result = {}
    for path in self.vectors:
      position = leaves.find(path, owner=f"{what}: directions")
      if position is None:
        continue
      leaf = leaves.leaves[position]
      dtype = _compute_dtype(leaf.dtype)
      basis = current[path_string(path)]
      result[path_string(path)] = jnp.einsum(
          "kn,n->k", basis.reshape(basis.shape[0], -1).astype(dtype), leaf.reshape(-1).astype(dtype),
          precision=_HIGHEST)
    return result

  def measure(self, updates, current, extra_args, *, what):
    del extra_args
    leaves = _Leaves(updates)
    metrics = self.zero_metrics()
    coefficients = self.coefficients(updates, current, what=what)
    for path in self.vectors:
      name = path_string(path)
      if name not in coefficients:  # masked out
        continue
      leaf = leaves.leaves[leaves.position[path]]
      norm_squared = jnp.sum(jnp.square(leaf.astype(_compute_dtype(leaf.dtype))))
      metrics.update(_shares(jnp.square(coefficients[name]), norm_squared, name))
    return metrics


@dataclasses.dataclass(frozen=True, eq=False)
class SiteDirections(Directions):
  """Orthonormal bases at sites, with the links that map them onto parameters (see
  `site_directions`).

  Attributes:
    bases: site -> `Basis` (K, D), checked orthonormal; sorted by site.
    site_links: site -> the links the transforms act through (role-filtered), for these sites only.
    extra_arg: the keyword through which new bases arrive, or None when fixed.
  """

  bases: dict[str, Basis]
  site_links: dict[str, tuple[ParamLink, ...]]
  extra_arg: str | None = None

  def counts(self) -> dict[str, int]:
    return {site: basis.num_directions for site, basis in self.bases.items()}

  def check_tree(self, tree, *, what):
    _check_site_tree(tree, self.site_links,
                     {site: tuple(basis.vectors.shape) for site, basis in self.bases.items()},
                     what=what)

  def init(self):
    if self.extra_arg is None:
      return optax.EmptyState()
    return HeldDirectionsState({site: basis.vectors for site, basis in self.bases.items()})

  def current(self, state, extra_args, *, what):
    if self.extra_arg is None:
      return {site: basis.vectors for site, basis in self.bases.items()}, state
    held = dict(state.directions)
    given = extra_args.get(self.extra_arg)
    if given is not None:
      if not isinstance(given, Mapping):
        raise DirectionsError(f"{what}: extra arg {self.extra_arg!r} must map site -> Basis or "
                              f"(K, D) array; got {type(given).__name__}")
      for site, basis in given.items():
        if site not in held:
          raise DirectionsError(f"{what}: extra arg {self.extra_arg!r} has a basis for site "
                                f"{site!r}, which has none at construction; known: "
                                f"{sorted(held)}")
        vectors = basis.vectors if isinstance(basis, Basis) else basis
        if tuple(jnp.shape(vectors)) != tuple(held[site].shape):
          raise DirectionsError(f"{what}: extra arg {self.extra_arg!r}: basis at site {site!r} "
                                f"has shape {tuple(jnp.shape(vectors))}; expected "
                                f"{tuple(held[site].shape)} (K, D) as at construction")
        held[site] = jnp.asarray(vectors).astype(held[site].dtype)
    return held, HeldDirectionsState(held)

  def resolve_gains(self, gains, *, what):
    return _resolve_named_gains(gains, self.counts(), what=what, kind="site", allow_vector=True)

  def apply(self, updates, current, span_gains, complement_gain, *, what):
    return _apply_sites(updates, self.site_links, current, span_gains, complement_gain, what=what)

  def coefficients(self, updates, current, *, what):
    result = {}
    for site in sorted(current):
      basis = current[site]
      entries = []
      for link, moved in _site_rows(updates, self.site_links, site, what=what, flatten=False):
        _check_rows_width(site, link, moved, basis, what=what)
        leaf_coefficients = jnp.einsum("...d,kd->...k", moved, basis.astype(moved.dtype),
                                       precision=_HIGHEST)
        entries.append((TouchedParameter(site, link.path, link.role, link.axis, link.index),
                        leaf_coefficients))
      result[site] = entries
    return result

  def measure(self, updates, current, extra_args, *, what):
    del extra_args
    metrics = self.zero_metrics()
    for site in sorted(current):
      basis = current[site]
      squared_K = jnp.zeros((basis.shape[0],), jnp.float32)
      norm_squared = jnp.zeros((), jnp.float32)
      for link, rows in _site_rows(updates, self.site_links, site, what=what):
        _check_rows_width(site, link, rows, basis, what=what)
        coefficients_MxK = jnp.einsum("md,kd->mk", rows, basis.astype(rows.dtype),
                                      precision=_HIGHEST)
        squared_K = squared_K + jnp.sum(jnp.square(coefficients_MxK), axis=0)
        norm_squared = norm_squared + jnp.sum(jnp.square(rows))
      metrics.update(_shares(squared_K, norm_squared, site))
    return metrics


def _check_rows_width(site: str, link: ParamLink, rows: jax.Array, basis: jax.Array, *,
                      what: str) -> None:
  if rows.shape[-1] != basis.shape[-1]:
    raise DirectionsError(f"{what}: site {site!r}, link {path_string(link.path)!r}: size "
                          f"{rows.shape[-1]} on axis {link.axis} but the basis has shape "
                          f"{tuple(basis.shape)}")


@dataclasses.dataclass(frozen=True, eq=False)
class DictionaryDirections(Directions):
  """The span of selected dictionary rows at sites (see `dictionary_directions`).

  Attributes:
    dictionaries: site -> (N, D) rows as given.
    selected: site -> int indices (S,), a bool mask (N,), or None (all rows).
    site_links: site -> the links the transforms act through (role-filtered).
    initial_bases: site -> (R, D), the span basis of the given selection (float64 SVD).
    refresh_every: with ``extra_arg``, the span basis is recomputed on updates whose count (updates
      so far) is a multiple of this, from the dictionary and selection passed that step.
    rtol: singular values at or below ``rtol`` times the largest are treated as zero.
    axis_name: the ``jax.vmap`` axis name over seeds, if any (see `dictionary_directions`).
    extra_arg: the keyword through which new dictionaries/selections arrive, or None when fixed.
  """

  dictionaries: dict[str, jax.Array]
  selected: dict[str, jax.Array | None]
  site_links: dict[str, tuple[ParamLink, ...]]
  initial_bases: dict[str, jax.Array]
  refresh_every: int = 1
  rtol: float = 1e-4
  axis_name: str | None = None
  extra_arg: str | None = None

  def counts(self) -> dict[str, int]:
    return {site: int(dictionary.shape[0]) for site, dictionary in self.dictionaries.items()}

  def check_tree(self, tree, *, what):
    _check_site_tree(tree, self.site_links,
                     {site: tuple(d.shape) for site, d in self.dictionaries.items()}, what=what)

  def init(self):
    return DictionaryState(count=jnp.zeros((), jnp.int32), bases=dict(self.initial_bases))

  def _given(self, extra_args, *, what) -> dict[str, tuple[jax.Array, jax.Array | None]]:
    """site -> (dictionary, selection) passed this step (falling back to the constructor's)."""
    given = extra_args.get(self.extra_arg) if self.extra_arg is not None else None
    if given is None:
      return {}
    if not isinstance(given, Mapping):
      raise DirectionsError(f"{what}: extra arg {self.extra_arg!r} must map site -> "
                            f"DictionarySelection (or an (N, D) dictionary); got "
                            f"{type(given).__name__}")
    resolved = {}
    for site, value in given.items():
      if site not in self.dictionaries:
        raise DirectionsError(f"{what}: extra arg {self.extra_arg!r} names site {site!r}, which "
                              f"has no dictionary at construction; known: "
                              f"{sorted(self.dictionaries)}")
      if not isinstance(value, DictionarySelection):
        value = DictionarySelection(dictionary_NxD=value)
      dictionary = self.dictionaries[site] if value.dictionary_NxD is None else value.dictionary_NxD
      selected = self.selected[site] if value.selected is None else value.selected
      expected = tuple(self.dictionaries[site].shape)
      if tuple(jnp.shape(dictionary)) != expected:
        raise DirectionsError(f"{what}: extra arg {self.extra_arg!r}: dictionary at site {site!r} "
                              f"has shape {tuple(jnp.shape(dictionary))}; expected {expected}")
      if value.selected is not None:
        before = self.selected[site]
        if before is None:
          raise DirectionsError(f"{what}: extra arg {self.extra_arg!r}: site {site!r} was built "
                                f"with all rows selected; a selection cannot be passed later "
                                f"(build it with a mask to change it during training)")
        same_kind = (jnp.issubdtype(jnp.result_type(selected), jnp.bool_)
                     == jnp.issubdtype(before.dtype, jnp.bool_))
        if tuple(jnp.shape(selected)) != tuple(before.shape) or not same_kind:
          raise DirectionsError(
              f"{what}: extra arg {self.extra_arg!r}: selection at site {site!r} has shape "
              f"{tuple(jnp.shape(selected))} and dtype {jnp.result_type(selected)}; expected shape "
              f"{tuple(before.shape)} and dtype {before.dtype} as at construction")
      resolved[site] = (jnp.asarray(dictionary), None if selected is None else jnp.asarray(selected))
    return resolved

  def current(self, state, extra_args, *, what):
    bases = dict(state.bases)
    given = self._given(extra_args, what=what)
    if given:
      due = state.count % self.refresh_every == 0
      if self.axis_name is not None:
        # Seeds share the schedule; reducing over the vmapped axis makes the predicate unbatched so
        # that lax.cond stays a branch instead of a select that refreshes every step.
        due = jax.lax.pmax(due.astype(jnp.int32), self.axis_name) > 0

      def refresh(bases):
        refreshed = dict(bases)
        for site, (dictionary, selected) in given.items():
          refreshed[site] = span_basis(dictionary, selected, rtol=self.rtol).astype(
              bases[site].dtype)
        return refreshed

      bases = jax.lax.cond(due, refresh, lambda bases: dict(bases), bases)
    return bases, DictionaryState(count=optax.safe_increment(state.count), bases=bases)

  def resolve_gains(self, gains, *, what):
    return _resolve_named_gains(gains, self.counts(), what=f"{what} (dictionary directions: one "
                                f"gain per site, for the whole selected span)", kind="site",
                                allow_vector=False)

  def apply(self, updates, current, span_gains, complement_gain, *, what):
    return _apply_sites(updates, self.site_links, current, span_gains, complement_gain, what=what)

  def measure(self, updates, current, extra_args, *, what):
    given = self._given(extra_args, what=what)
    metrics = {}
    for site in sorted(current):
      dictionary = (given[site][0] if site in given else self.dictionaries[site])
      basis_RxD = current[site]
      rows_by_link = _site_rows(updates, self.site_links, site, what=what)
      num_rows, width = dictionary.shape
      norm_squared = jnp.zeros((), jnp.float32)
      for link, rows in rows_by_link:
        _check_rows_width(site, link, rows, basis_RxD, what=what)
        norm_squared = norm_squared + jnp.sum(jnp.square(rows))
      dictionary = dictionary.astype(jnp.float32)
      basis_RxD = basis_RxD.astype(jnp.float32)
      if num_rows > width:
        # ||U d||^2 = d^T (U^T U) d: one D x D Gram per link, then O(N D^2), never O(M N D).
        gram_DxD = jnp.zeros((width, width), jnp.float32)
        for _, rows in rows_by_link:
          gram_DxD = gram_DxD + jnp.einsum("md,me->de", rows, rows, precision=_HIGHEST)
        squared_N = jnp.einsum("nd,de,ne->n", dictionary, gram_DxD, dictionary, precision=_HIGHEST)
        in_span = jnp.einsum("rd,de,re->", basis_RxD, gram_DxD, basis_RxD, precision=_HIGHEST)
      else:
        squared_N = jnp.zeros((num_rows,), jnp.float32)
        in_span = jnp.zeros((), jnp.float32)
        for _, rows in rows_by_link:
          rows = rows.astype(jnp.float32)
          squared_N = squared_N + jnp.sum(
              jnp.square(jnp.einsum("md,nd->mn", rows, dictionary, precision=_HIGHEST)), axis=0)
          in_span = in_span + jnp.sum(
              jnp.square(jnp.einsum("md,rd->mr", rows, basis_RxD, precision=_HIGHEST)))
      squared_N = jnp.maximum(squared_N, 0.0)
      row_norm_squared = jnp.sum(jnp.square(dictionary), axis=-1)
      positive = (norm_squared > 0) & (row_norm_squared > 0)
      share = jnp.where(positive, squared_N / jnp.where(positive, norm_squared * row_norm_squared,
                                                        1.0), 0.0)
      has_norm = norm_squared > 0
      metrics.update({
          f"{site}/magnitude": jnp.sqrt(squared_N),
          f"{site}/share": share,
          f"{site}/total_share": jnp.where(has_norm, jnp.clip(in_span, 0.0) / jnp.where(
              has_norm, norm_squared, 1.0), 0.0),
          f"{site}/norm": jnp.sqrt(norm_squared),
      })
    return {name: value.astype(jnp.float32) for name, value in metrics.items()}


# --------------------------------------------------------------------------------------------------
# Constructors.


def param_directions(directions: Any, *, params: Any = None,
                     extra_arg: str | None = None) -> ParamDirections:
  """Directions per parameter leaf, validated.

  Args:
    directions: a pytree mirroring the params; each leaf None (leave it alone) or an array
      (K, *leaf.shape) whose K rows, flattened, are orthonormal. None may stand for a subtree.
    params: the params (arrays or `jax.ShapeDtypeStruct`s); when given, every direction's path and
      shape are checked against them now.
    extra_arg: the keyword through which new directions (a pytree like ``directions``; None leaves
      keep the held ones) arrive each step; None when fixed.

  Raises:
    BasisError: directions with fewer than 2 dimensions, non-finite entries, more rows than the
      leaf has entries, or rows that are not orthonormal; the message names the path and shape.
    DirectionsError: a path missing from ``params`` or a shape that does not match its leaf.
  """
  flat = jax.tree_util.tree_flatten_with_path(directions, is_leaf=lambda value: value is None)[0]
  vectors = {}
  for keypath, leaf_directions in flat:
    if leaf_directions is None:
      continue
    path = tuple(_key_name(entry) for entry in keypath)
    owner = f"param_directions: parameter {path_string(path)!r}"
    if isinstance(leaf_directions, Basis):
      raise DirectionsError(f"{owner}: got a Basis; bases at sites go through "
                            f"site_directions(bases, site_links)")
    shape = tuple(jnp.shape(leaf_directions))
    if len(shape) < 2:
      raise BasisError(f"{owner}: directions of shape {shape}; expected (K, *leaf.shape)")
    if _is_concrete(leaf_directions):
      host = np.asarray(leaf_directions, dtype=np.float64).reshape(shape[0], -1)
      _check_finite(host, owner=owner)
      if shape[0] > host.shape[1]:
        raise BasisError(f"{owner}: {shape[0]} directions for a leaf of {host.shape[1]} entries "
                         f"(shape {shape}); K must be <= the leaf size")
      _check_orthonormal_rows(host, owner=owner, shape=shape)
    vectors[path] = jnp.asarray(leaf_directions)
  if not vectors:
    raise DirectionsError("param_directions: every leaf is None; nothing to act on")
  result = ParamDirections(vectors=vectors, extra_arg=extra_arg)
  if params is not None:
    result.check_tree(params, what="param_directions")
  return result


def _as_basis(site: str, basis: Basis | Any) -> Basis:
  if not isinstance(basis, Basis):
    vectors = jnp.asarray(basis)
    if vectors.ndim != 2:
      raise BasisError(f"basis at site {site!r}: expected a (K, D) array, got shape "
                       f"{tuple(vectors.shape)}")
    basis = Basis(vectors=vectors, fitted_step=jnp.asarray(-1, jnp.int32), site=site,
                  labels=tuple(f"{site}/{i}" for i in range(vectors.shape[0])))
  if basis.site != site:
    raise BasisError(f"basis under key {site!r} is for site {basis.site!r}")
  if basis.vectors.ndim != 2:
    raise BasisError(f"basis at site {site!r}: expected a (K, D) array, got shape "
                     f"{tuple(basis.vectors.shape)}; per-seed bases come through extra args")
  check_basis(basis)
  return basis


def site_directions(bases: Mapping[str, Basis | Any],
                    site_links: Mapping[str, Sequence[ParamLink]], *, params: Any = None,
                    roles: Sequence[str] = ROLES, extra_arg: str | None = None) -> SiteDirections:
  """Orthonormal bases at sites, mapped onto the parameters through ``site_links``, validated.

  Args:
    bases: site -> `Basis` or (K, D) array with orthonormal rows (build it with `make_basis`).
    site_links: the model's site -> links (`Model.site_links`).
    params: the params (arrays or `jax.ShapeDtypeStruct`s); when given, every link's path, stack
      index and axis are checked against them now (otherwise at the transform's init).
    roles: which links act: "writes", "reads" or both.
    extra_arg: the keyword through which new bases (site -> `Basis` or (K, D) array, any subset of
      the sites, same shapes) arrive each step; None when fixed.

  Raises:
    BasisError (via `check_basis`): a basis that is not 2-D, has non-finite entries, is not
      orthonormal, or whose labels do not match; the message names the site and shape.
    DirectionsError: a site without links (for these roles), a bad role, or, with ``params``, a
      link path not in the params or a leaf whose size on the link's axis is not the basis width;
      the message names the site, the path and the shapes.
  """
  if not bases:
    raise DirectionsError("site_directions: no bases given")
  checked = {site: _as_basis(site, bases[site]) for site in sorted(bases)}
  links = _normalize_links(site_links, list(checked), roles, what="site_directions")
  result = SiteDirections(bases=checked, site_links=links, extra_arg=extra_arg)
  if params is not None:
    result.check_tree(params, what="site_directions")
  return result


def _span_basis_numpy(rows: np.ndarray, rtol: float) -> np.ndarray:
  if rows.shape[0] == 0:
    return np.zeros((0, rows.shape[1]))
  _, singular_values, vt = np.linalg.svd(rows, full_matrices=False)
  keep = singular_values > rtol * singular_values[0]
  return vt * keep[:, None]


def span_basis(dictionary_NxD: jax.Array, selected: jax.Array | None = None, *,
               rtol: float = 1e-4) -> jax.Array:
  """An orthonormal basis (R, D) of the span of the selected rows of a dictionary; traceable.

  ``selected`` is int indices (S,) (R = min(S, D)), a bool mask (N,) or None (R = min(N, D)).
  Rows of the result beyond the span's rank (singular values <= ``rtol`` times the largest) are
  zero, so R is static whatever the selection. Cost O(S D R) via an SVD in float32 (or wider).
  """
  dictionary = jnp.asarray(dictionary_NxD)
  dtype = _compute_dtype(dictionary.dtype)
  rows = dictionary.astype(dtype)
  if selected is not None:
    selected = jnp.asarray(selected)
    if jnp.issubdtype(selected.dtype, jnp.bool_):
      rows = rows * selected.astype(dtype)[:, None]
    else:
      rows = rows[selected]
  _, singular_values, vt = jnp.linalg.svd(rows, full_matrices=False)
  keep = singular_values > rtol * singular_values[0]
  return vt * keep.astype(dtype)[:, None]


def dictionary_directions(dictionaries: Mapping[str, Any],
                          selected: Mapping[str, Any] | None,
                          site_links: Mapping[str, Sequence[ParamLink]], *, params: Any = None,
                          roles: Sequence[str] = ROLES, refresh_every: int = 1,
                          rtol: float = 1e-4, axis_name: str | None = None,
                          extra_arg: str | None = None) -> DictionaryDirections:
  """The span of selected rows of a (possibly overcomplete, non-orthonormal) dictionary at sites.

  The transforms hold an orthonormal basis (R, D) of that span in their state (R = min(S, D) for S
  selected indices, min(N, D) for a mask or all rows; rows past the span's rank are zero), so a step
  costs O(R D) per row of each linked leaf whatever N is. `project_out` makes the update orthogonal
  to every selected row up to singular values of the selection at or below ``rtol`` times the
  largest.

  Refresh. With ``extra_arg`` set, an update that receives ``{extra_arg: {site:
  DictionarySelection(dictionary_NxD, selected)}}`` recomputes the basis (an SVD, O(S D R)) from
  them when its count of updates so far is a multiple of ``refresh_every`` (so on the first update);
  other updates use the held basis. Without ``extra_arg`` nothing can change and the basis, computed
  here once in float64, is only held. The refresh is a ``lax.cond``. Under ``jax.vmap`` over seeds
  the count in the state is batched, which turns the cond into a select that computes the refresh on
  every step (correct, but the SVD cost every step); pass the vmap's ``axis_name`` here to avoid it:
  the due-predicate is then reduced over that axis (all seeds share the schedule), stays unbatched,
  and the cond stays a branch. A transform built with ``axis_name`` must run inside that vmap.

  Args:
    dictionaries: site -> (N, D) rows.
    selected: site -> int indices (S,), bool mask (N,), or None (all rows); None for all sites.
    site_links: the model's site -> links.
    params: when given, links are checked against them now (otherwise at the transform's init).
    roles: which links act: "writes", "reads" or both.
    refresh_every: steps between refreshes when the dictionary/selection arrive as extra args.
    rtol: relative singular-value cut for the span's rank.
    axis_name: the seed axis name of an enclosing ``jax.vmap`` (see above), or None.
    extra_arg: the keyword through which site -> `DictionarySelection` (or an (N, D) array) arrive.

  Raises:
    BasisError: a dictionary that is not 2-D or has non-finite entries; bad selected indices.
    DirectionsError: as `site_directions`.
  """
  if not dictionaries:
    raise DirectionsError("dictionary_directions: no dictionaries given")
  if int(refresh_every) < 1:
    raise DirectionsError(f"dictionary_directions: refresh_every={refresh_every} must be >= 1")
  selected = dict(selected or {})
  unknown = sorted(set(selected) - set(dictionaries))
  if unknown:
    raise DirectionsError(f"dictionary_directions: selections for sites {unknown} without a "
                          f"dictionary; dictionaries at {sorted(dictionaries)}")
  checked_dictionaries, checked_selected, initial_bases = {}, {}, {}
  for site in sorted(dictionaries):
    owner = f"dictionary at site {site!r}"
    host = np.asarray(dictionaries[site], dtype=np.float64)
    if host.ndim != 2:
      raise BasisError(f"{owner}: expected an (N, D) array, got shape {host.shape}")
    _check_finite(host, owner=owner)
    rows = host
    chosen = selected.get(site)
    if chosen is not None:
      chosen_host = np.asarray(chosen)
      if chosen_host.dtype == np.bool_:
        if chosen_host.shape != (host.shape[0],):
          raise BasisError(f"{owner}: mask of shape {chosen_host.shape} for a dictionary of shape "
                           f"{host.shape}; expected ({host.shape[0]},)")
        rows = host * chosen_host[:, None]
      elif np.issubdtype(chosen_host.dtype, np.integer) and chosen_host.ndim == 1:
        if chosen_host.size and (chosen_host.min() < 0 or chosen_host.max() >= host.shape[0]):
          raise BasisError(f"{owner}: selected indices span [{chosen_host.min()}, "
                           f"{chosen_host.max()}], outside [0, {host.shape[0]}) (shape {host.shape})")
        rows = host[chosen_host]
      else:
        raise BasisError(f"{owner}: selected must be 1-D int indices or a bool mask of shape "
                         f"({host.shape[0]},); got shape {chosen_host.shape}, dtype "
                         f"{chosen_host.dtype}")
      chosen = jnp.asarray(chosen_host)
    dtype = jnp.asarray(dictionaries[site]).dtype
    dtype = dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32
    checked_dictionaries[site] = jnp.asarray(dictionaries[site], dtype)
    checked_selected[site] = chosen
    initial_bases[site] = jnp.asarray(_span_basis_numpy(rows, rtol), _compute_dtype(dtype))
  links = _normalize_links(site_links, list(checked_dictionaries), roles,
                           what="dictionary_directions")
  result = DictionaryDirections(dictionaries=checked_dictionaries, selected=checked_selected,
                                site_links=links, initial_bases=initial_bases,
                                refresh_every=int(refresh_every), rtol=float(rtol),
                                axis_name=axis_name, extra_arg=extra_arg)
  if params is not None:
    result.check_tree(params, what="dictionary_directions")
  return result


def as_directions(directions: Any) -> Directions:
  """``directions`` if already built, else a parameter-space pytree through `param_directions`."""
  if isinstance(directions, Directions):
    return directions
  if isinstance(directions, Mapping) and any(isinstance(value, Basis)
                                             for value in directions.values()):
    raise DirectionsError("bases at sites must be mapped to parameters first: "
                          "site_directions(bases, site_links)")
  return param_directions(directions)
