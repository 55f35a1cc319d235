"""The one form every way of giving directions is lowered to, when it is built.

Per parameter (`param_directions`), at a site through its links (`site_directions`) or as the span
of selected dictionary rows (`dictionary_directions`): each becomes a `Directions`, a tuple of
`Along` entries in application order, one per (touched leaf, way it is touched), each naming its
leaf, the axis it acts on, the target whose basis it uses (a site, or the leaf's own path) and the
link it came from. The transforms read nothing else: a transform's update is one tree map over the
updates that looks up each leaf's entries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from landscape.sites import BadInputError
from landscape.sites import Basis
from landscape.sites import ParamLink
from landscape.sites import path_string

ROLES = ("writes", "reads")


class DirectionsError(BadInputError):
  """Directions that do not fit the parameters: a site without links, a missing path, a bad
  shape."""


class TouchedParameter(NamedTuple):
  """One parameter leaf that a site constraint changes, in the order the transforms apply them."""

  site: str
  path: tuple[str, ...]
  role: str
  axis: int
  index: int | None


class Along(NamedTuple):
  """One way one leaf is acted on: along ``axis`` of the leaf (or of its slice ``index`` on the
  leading, stacked axis), by the rows of the basis of ``target``.

  target: the key of the basis, the gains and the metrics: a site, or the leaf's own path.
  path: the leaf's "/"-joined key path.
  axis: the axis whose coordinates the basis rows live in; None when the whole leaf, flattened in
    C order, is one vector (per-parameter directions).
  index: the stack index, or None.
  link: the site link it was lowered from; None for per-parameter directions.
  """

  target: str
  path: str
  axis: int | None
  index: int | None
  link: ParamLink | None

  def touched(self) -> TouchedParameter:
    return TouchedParameter(self.target, tuple(self.link.path), self.link.role, self.link.axis,
                            self.link.index)


class HeldDirectionsState(NamedTuple):
  """State of a transform whose directions arrive as extra args.

  directions: target -> the basis in use, (K, D) per site or (K, *leaf.shape) per parameter path;
    replaced whenever new ones arrive.
  """

  directions: dict[str, jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class Directions:
  """Directions lowered to the per-parameter form (build with `param_directions`, `site_directions`
  or `dictionary_directions`). Not a pytree: a fixed, validated description closed over by a
  transform; new bases arrive through ``extra_arg``.

  Attributes:
    kind: "parameter", "site" or "dictionary" (what was given; gains and messages depend on it).
    alongs: every (leaf, axis, target) in application order: targets in sorted order, then each
      site's links in the order given.
    bases: target -> orthonormal rows: (K, D) for a site, (R, D) span basis of a dictionary's
      selected rows (rows past the span's rank are zero), (K, *leaf.shape) per parameter.
    rows: target -> the rows `attribute` reports along: the bases, or a dictionary's (N, D) rows.
    extra_arg: the keyword through which new bases (target -> array of the held shape) arrive each
      step, held in the transform's state; None when fixed.
    selected: dictionary only: site -> the selection given (int indices, bool mask or None).
    rtol: dictionary only: the relative singular-value cut of the span.
    by_leaf: derived: leaf path -> its entries of ``alongs``, in order (what each update looks up).
  """

  kind: str
  alongs: tuple[Along, ...]
  bases: dict[str, jax.Array]
  rows: dict[str, jax.Array]
  extra_arg: str | None = None
  selected: dict[str, jax.Array | None] = dataclasses.field(default_factory=dict)
  rtol: float = 1e-4

  def __post_init__(self):
    by_leaf: dict[str, list[Along]] = {}
    for along in self.alongs:
      by_leaf.setdefault(along.path, []).append(along)
    object.__setattr__(self, "by_leaf", {path: tuple(alongs) for path, alongs in by_leaf.items()})

  def counts(self) -> dict[str, int]:
    """target -> the number of rows its metrics report (K, or N for a dictionary)."""
    return {target: int(rows.shape[0]) for target, rows in self.rows.items()}

  def init(self) -> optax.EmptyState | HeldDirectionsState:
    if self.extra_arg is None:
      return optax.EmptyState()
    return HeldDirectionsState(dict(self.bases))

  def current(self, state: Any, extra_args: Mapping[str, Any], *,
              what: str) -> tuple[dict[str, jax.Array], Any]:
    """(target -> the basis to use this step, the new state)."""
    if self.extra_arg is None:
      return dict(self.bases), state
    held = self.replaced(state.directions, extra_args.get(self.extra_arg), what=what)
    return held, HeldDirectionsState(held)

  def replaced(self, held: Mapping[str, jax.Array], given: Any, *,
               what: str) -> dict[str, jax.Array]:
    """``held`` with the bases in ``given`` (the extra arg's value, or None) put in; shapes checked
    (when traced too), values trusted."""
    held = dict(held)
    if given is None:
      return held
    name = f"{what}: extra arg {self.extra_arg!r}"
    if self.kind == "parameter":
      flat = jax.tree_util.tree_flatten_with_path(given, is_leaf=lambda value: value is None)[0]
      given = {path_string(keypath): value for keypath, value in flat if value is not None}
    elif not isinstance(given, Mapping):
      raise DirectionsError(f"{name} must map site -> Basis or (K, D) array; got "
                            f"{type(given).__name__}")
    noun = "parameter" if self.kind == "parameter" else "site"
    for target, basis in given.items():
      if target not in held:
        raise DirectionsError(f"{name} has directions for {noun} {target!r}, which has none at "
                              f"construction; known: {abbreviate(sorted(held))}")
      vectors = basis.vectors if isinstance(basis, Basis) else basis
      if not hasattr(vectors, "shape"):
        raise DirectionsError(f"{name}: {noun} {target!r}: expected a Basis or an array; got "
                              f"{type(vectors).__name__}")
      if tuple(jnp.shape(vectors)) != tuple(held[target].shape):
        raise DirectionsError(f"{name}: {noun} {target!r} has shape {tuple(jnp.shape(vectors))}; "
                              f"expected {tuple(held[target].shape)} as at construction")
      held[target] = jnp.asarray(vectors).astype(held[target].dtype)
    return held

  def check_params(self, params: Any, *, what: str) -> None:
    """Raises unless every leaf the directions touch is in ``params`` with a fitting shape.

    ``params`` may hold arrays or `jax.ShapeDtypeStruct`s; leaves under an `optax.MaskedNode`
    (inside `optax.masked` or `optax.partition`) are skipped.
    """
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_masked)[0]
    if not any(hasattr(leaf, "shape") for _, leaf in flat):
      return
    shapes = {path_string(keypath): tuple(leaf.shape) for keypath, leaf in flat
              if not is_masked(leaf)}
    masked = {path_string(keypath) for keypath, leaf in flat if is_masked(leaf)}
    for along in self.alongs:
      shape = shapes.get(along.path)
      if shape is None:
        parts = along.path.split("/")
        if any("/".join(parts[:length]) in masked for length in range(len(parts) + 1)):
          continue
        below = [path for path in shapes if path.startswith(along.path + "/")]
        hint = f" (a subtree of {len(below)} leaves, not a leaf)" if below else ""
        raise DirectionsError(
            f"{what}: {owner(along)}: no parameter at path {along.path!r}{hint}; the tree has "
            f"{len(shapes)} leaves: {abbreviate(list(shapes))}")
      check_leaf(along, shape, tuple(self.bases[along.target].shape), what=what)


def is_masked(value: Any) -> bool:
  return isinstance(value, optax.MaskedNode)


def abbreviate(names: Sequence[str], limit: int = 12) -> str:
  names = list(names)
  if len(names) <= limit:
    return ", ".join(names)
  return ", ".join(names[:limit]) + f", ... ({len(names) - limit} more)"


def owner(along: Along) -> str:
  """How messages name the origin of ``along``."""
  if along.link is None:
    return f"directions for parameter {along.path!r}"
  return (f"site {along.target!r}, link {along.path!r} (role {along.link.role}, axis "
          f"{along.axis}, index {along.index})")


def check_leaf(along: Along, leaf_shape: tuple[int, ...], basis_shape: tuple[int, ...], *,
               what: str) -> None:
  """Raises unless ``along`` can act on a leaf of ``leaf_shape`` with a basis of ``basis_shape``."""
  if along.axis is None:
    if tuple(basis_shape[1:]) != tuple(leaf_shape):
      raise DirectionsError(f"{what}: directions for parameter {along.path!r} have shape "
                            f"{basis_shape}; expected (K, *{leaf_shape})")
    return
  name = f"{what}: {owner(along)}"
  shape = tuple(leaf_shape)
  if along.index is not None:
    if not shape or along.index >= shape[0]:
      raise DirectionsError(f"{name}: stack index {along.index} out of range for a parameter of "
                            f"shape {shape}")
    shape = shape[1:]
  piece = "parameter's slice" if along.index is not None else "parameter"
  if not -len(shape) <= along.axis < len(shape):
    raise DirectionsError(f"{name}: axis {along.axis} out of range for a {piece} of shape {shape}")
  if shape[along.axis] != basis_shape[-1]:
    raise DirectionsError(
        f"{name}: the {piece} of shape {shape} has size {shape[along.axis]} on axis {along.axis}, "
        f"but the basis at the site has width {basis_shape[-1]} (shape {basis_shape})")


def leaf_rows(leaf: jax.Array, along: Along) -> jax.Array:
  """The vectors ``along`` acts on, as the last axis of (..., D), in the compute dtype."""
  piece = leaf if along.index is None else leaf[along.index]
  piece = piece.astype(compute_dtype(piece.dtype))
  if along.axis is None:
    return piece.reshape(1, -1)
  return jnp.moveaxis(piece, along.axis, -1)


def flat_basis(basis: jax.Array, dtype: Any) -> jax.Array:
  """A basis as (K, D) rows in ``dtype`` (a per-parameter basis (K, *leaf.shape) flattened)."""
  return basis.reshape(basis.shape[0], -1).astype(dtype)


def compute_dtype(dtype: Any) -> jnp.dtype:
  """float32, or the given dtype when it is wider."""
  return jnp.promote_types(dtype, jnp.float32)


# --------------------------------------------------------------------------------------------------
# Gains.


def _is_uniform_gain(gains: Any) -> bool:
  return isinstance(gains, (int, float)) or hasattr(gains, "shape")


def resolve_gains(directions: Directions, gains: Any, *, what: str) -> dict[str, Any]:
  """gains (scalar, (K,), a mapping target -> gain, or per parameter a pytree mirroring the
  directions) -> target -> gain, shapes checked: () or (K,), () only for a dictionary."""
  counts = {target: int(basis.shape[0]) for target, basis in directions.bases.items()}
  kind = "parameter" if directions.kind == "parameter" else "site"
  allow_vector = directions.kind != "dictionary"
  if directions.kind == "dictionary":
    what = f"{what} (dictionary directions: one gain per site, for the whole selected span)"
  if gains is None:
    raise DirectionsError(f"{what}: gains must be given (a scalar, a (K,) array or a mapping)")
  if (directions.kind == "parameter" and not _is_uniform_gain(gains)
      and not (isinstance(gains, Mapping) and set(gains) <= set(counts))):
    flat = jax.tree_util.tree_flatten_with_path(gains, is_leaf=lambda value: value is None)[0]
    gains = {path_string(keypath): gain for keypath, gain in flat if gain is not None}
  if _is_uniform_gain(gains):
    resolved = {target: gains for target in counts}
  elif isinstance(gains, Mapping):
    missing = sorted(set(counts) - set(gains))
    unknown = sorted(set(gains) - set(counts))
    if missing or unknown:
      raise DirectionsError(f"{what}: gains per {kind} must name exactly the {kind}s "
                            f"{sorted(counts)}; missing {missing}, unknown {unknown}")
    resolved = {target: gains[target] for target in counts}
  else:
    raise DirectionsError(f"{what}: gains of type {type(gains).__name__}; expected a scalar, a "
                          f"(K,) array or a mapping {kind} -> gain")
  for target, gain in resolved.items():
    shape = tuple(jnp.shape(gain))
    if shape == () or (allow_vector and shape == (counts[target],)):
      continue
    expected = f"() or ({counts[target]},)" if allow_vector else "() (a scalar)"
    raise DirectionsError(f"{what}: {kind} {target!r}: gain of shape {shape}; expected {expected}")
  return resolved
