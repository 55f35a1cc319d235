"""Basis: named, orthonormal directions at one site of a model.

It lives on the lowest floor, beside the sites themselves, because every floor above speaks of it:
interventions and gradient transforms act along a basis, and `landscape.directions` finds one.

A `Basis` is a pytree: its vectors (and the step they were fitted at) are leaves, so it can live in
the train state, be sharded, vmapped over seeds, checkpointed with the run and refitted during
training; its site, labels and provenance are static metadata. It also saves to and loads from a
standalone ``.npz`` file.

Directions given as rows anywhere in the library (a basis, per-parameter directions, a dictionary)
are checked by `check_rows`: one tolerance, one message shape. `path_string` is the one spelling of
a parameter's key path.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from landscape.sites._errors import BadInputError


# One tolerance for every check that rows are orthonormal: max |V V^T - I|.
ORTHONORMAL_ATOL = 1e-4


class BasisError(BadInputError):
  """A basis that cannot be used: wrong width, non-finite entries, rank-deficient or not
  orthonormal."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Basis:
  """K orthonormal directions in the D-dimensional space of one site.

  Attributes:
    vectors: (K, D) with orthonormal rows; (..., K, D) when stacked over seeds.
    fitted_step: int32 scalar, the training step whose parameters it was fitted on; -1 when given.
    site: the site whose activation space the rows live in.
    labels: one label per direction.
    method: how it was found ("probe", "diff_of_means", "pca", "sae", "given", ...).
    source: where it was found (a checkpoint path, a dataset), free text.
  """

  vectors: jax.Array
  fitted_step: jax.Array
  site: str = dataclasses.field(metadata=dict(static=True))
  labels: tuple[str, ...] = dataclasses.field(metadata=dict(static=True))
  method: str = dataclasses.field(default="given", metadata=dict(static=True))
  source: str = dataclasses.field(default="", metadata=dict(static=True))

  @property
  def num_directions(self) -> int:
    return self.vectors.shape[-2]

  @property
  def width(self) -> int:
    return self.vectors.shape[-1]

  def replace(self, **changes) -> "Basis":
    return dataclasses.replace(self, **changes)

  def save(self, path: str | os.PathLike) -> None:
    """Writes the basis to ``path`` (.npz) atomically; an existing file is replaced only on success."""
    metadata = dict(site=self.site, labels=list(self.labels), method=self.method, source=self.source)
    path = os.fspath(path)
    temporary = path + ".tmp.npz"
    np.savez(temporary, vectors=np.asarray(self.vectors), fitted_step=np.asarray(self.fitted_step),
             metadata=np.asarray(json.dumps(metadata)))
    os.replace(temporary, path)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "Basis":
    with np.load(os.fspath(path)) as stored:
      metadata = json.loads(str(stored["metadata"]))
      vectors = jnp.asarray(stored["vectors"])
      fitted_step = jnp.asarray(stored["fitted_step"], jnp.int32)
    basis = cls(vectors=vectors, fitted_step=fitted_step, site=metadata["site"],
                labels=tuple(metadata["labels"]), method=metadata["method"],
                source=metadata["source"])
    check_basis(basis)
    return basis


def make_basis(vectors_KxD: jax.Array | np.ndarray, *, site: str,
               labels: Sequence[str] | None = None, method: str = "given", source: str = "",
               width: int | None = None, fitted_step: int = -1,
               rank_tolerance: float = 1e-6, dtype: jnp.dtype = jnp.float32) -> Basis:
  """Validates directions given as rows and returns them as an orthonormal `Basis`.

  The rows are orthonormalised in order (Gram-Schmidt through QR), so the first row of the result
  points along the first row given. Raises `BasisError`, naming the site and the shape, for a
  non-2-D array, non-finite entries, a width other than ``width``, more rows than dimensions, or
  rows whose span has rank below K (a singular value under ``rank_tolerance`` times the largest).
  """
  vectors = np.asarray(vectors_KxD, dtype=np.float64)
  if vectors.ndim == 1:
    vectors = vectors[None]
  owner = f"basis at site {site!r}"
  check_rows(vectors, owner=owner, width=width, orthonormal=False)
  num_directions, dimension = vectors.shape
  if num_directions > dimension:
    raise BasisError(f"{owner}: {num_directions} directions in a {dimension}-dimensional space "
                     f"(shape {vectors.shape}); K must be <= D")
  singular_values = np.linalg.svd(vectors, compute_uv=False)
  if singular_values[-1] <= rank_tolerance * singular_values[0]:
    rank = int(np.sum(singular_values > rank_tolerance * singular_values[0]))
    raise BasisError(f"{owner}: rows of shape {vectors.shape} span rank {rank} < {num_directions} "
                     f"(singular values {np.array2string(singular_values, precision=3)})")
  orthonormal = orthonormalize(vectors)
  if labels is None:
    labels = tuple(f"{site}/{i}" for i in range(num_directions))
  labels = tuple(labels)
  if len(labels) != num_directions:
    raise BasisError(f"{owner}: {len(labels)} labels for {num_directions} directions")
  return Basis(vectors=jnp.asarray(orthonormal, dtype),
               fitted_step=jnp.asarray(fitted_step, jnp.int32), site=site, labels=labels,
               method=method, source=source)


def orthonormalize(vectors_KxD: jax.Array | np.ndarray) -> jax.Array | np.ndarray:
  """Orthonormal rows spanning the same space as ``vectors_KxD``'s rows, in order; traceable.

  Works on NumPy arrays (in float64) and on JAX arrays under jit (a refit inside the training loop).
  Signs are fixed so that each output row has a positive inner product with its input row.
  """
  xp = np if isinstance(vectors_KxD, np.ndarray) else jnp
  q_DxK, r_KxK = xp.linalg.qr(xp.swapaxes(vectors_KxD, -1, -2))
  signs = xp.where(xp.diagonal(r_KxK, axis1=-2, axis2=-1) < 0, -1.0, 1.0).astype(q_DxK.dtype)
  return xp.swapaxes(q_DxK * signs[..., None, :], -1, -2)


def check_basis(basis: Basis, *, site: str | None = None, width: int | None = None,
                width_of: str = "the site") -> None:
  """Raises `BasisError` unless ``basis`` fits: see `check_rows`; its labels number its rows; and,
  given ``site``, it was fitted there.

  Needs concrete arrays (call it before jit, where bad input should be caught). Stacked bases
  (..., K, D) are checked slice by slice. ``width_of`` says where ``width`` comes from, for the
  message (e.g. "the site's activation of shape (B, D)").
  """
  if site is not None and basis.site != site:
    raise BasisError(f"basis given for site {site!r} was fitted at site {basis.site!r} (vectors "
                     f"{tuple(basis.vectors.shape)})")
  vectors = check_rows(basis.vectors, owner=f"basis at site {basis.site!r}", width=width,
                       width_of=width_of, stacked=True)
  if len(basis.labels) != vectors.shape[-2]:
    raise BasisError(f"basis at site {basis.site!r}: {len(basis.labels)} labels for "
                     f"{vectors.shape[-2]} directions (vectors {vectors.shape})")


def check_rows(vectors: jax.Array | np.ndarray, *, owner: str, width: int | None = None,
               width_of: str = "the site", orthonormal: bool = True, row_ndim: int = 1,
               stacked: bool = False) -> np.ndarray:
  """The one numeric check of directions given as rows; returns them as float64 NumPy.

  ``vectors`` is (K, *row) with ``row_ndim`` axes per row ((K, D) for a site, (K, *leaf.shape) for
  one parameter), or (..., K, *row) when ``stacked``. Raises `BasisError` with the message
  ``f"{owner}: ..."`` naming the shape, for: too few axes, a row width (last axis) other than
  ``width``, non-finite entries, and (when ``orthonormal``) rows whose flattened Gram matrix is off
  the identity by more than `ORTHONORMAL_ATOL` anywhere. Needs concrete arrays.
  """
  vectors = np.asarray(vectors, dtype=np.float64)
  shape = vectors.shape
  wanted = row_ndim + 1
  if vectors.ndim < wanted or (vectors.ndim > wanted and not stacked):
    expected = "(K, D)" if row_ndim == 1 else f"(K, ...) with {row_ndim} axes per row"
    raise BasisError(f"{owner}: expected a {expected} array, got shape {shape}")
  if width is not None and shape[-1] != width:
    raise BasisError(f"{owner}: rows of shape {shape} have width {shape[-1]}, but {width_of} has "
                     f"width {width}")
  bad = ~np.isfinite(vectors)
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise BasisError(f"{owner}: {int(bad.sum())} non-finite entries in shape {shape}, first at "
                     f"{where} = {vectors[where]}")
  if orthonormal:
    rows = vectors.reshape(shape[:vectors.ndim - wanted] + (shape[-wanted], -1))
    num_directions = rows.shape[-2]
    gram = rows @ np.swapaxes(rows, -1, -2)
    error = float(np.max(np.abs(gram - np.eye(num_directions)))) if num_directions else 0.0
    if error > ORTHONORMAL_ATOL:
      raise BasisError(f"{owner}: rows of shape {shape} are not orthonormal (max |V V^T - I| = "
                       f"{error:.3g} > {ORTHONORMAL_ATOL}); build them with make_basis or "
                       f"orthonormalize")
  return vectors


def path_string(path: str | Sequence[Any]) -> str:
  """A parameter's key path as "a/b/0/c": from a JAX key path, a tuple of names, or a string.

  The one spelling of parameter paths in messages, metric names and sharding rules.
  """
  if isinstance(path, str):
    return path
  return "/".join(entry if isinstance(entry, str) else str(entry) if isinstance(entry, int)
                  else jax.tree_util.keystr((entry,), simple=True, separator="/")
                  for entry in path)
