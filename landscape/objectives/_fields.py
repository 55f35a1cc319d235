"""What auxiliary terms read: batch fields, bases and vectors given or refreshed, weights.

Shared by the terms over interpretable directions. A basis is given as a `Basis` or a (K, D) array
with orthonormal rows (checked when the term is built), or read at every step from
``inputs.run.refreshed[key]``, the value of the refresher named ``key`` (a basis refitted during
training: a `Basis`, an array, or a mapping site -> either).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape.directions import Basis
from landscape.directions import check_basis

from landscape.objectives._composition import RunView
from landscape.objectives._composition import Weight as Schedule
from landscape.objectives._composition import value_at  # noqa: F401  (re-exported for the terms)
from landscape.sites import BadInputError


def batch_field(batch: Mapping[str, Any], key: str, *, term: str) -> jax.Array:
  """``batch[key]``, or a KeyError naming the term, the key and the fields the batch has."""
  if key not in batch:
    raise BadInputError(f"loss term {term!r} reads batch[{key!r}], but the batch has fields "
                        f"{sorted(batch)}")
  return batch[key]


def checked_rows(basis: Basis | jax.Array | np.ndarray, *, site: str, term: str) -> jax.Array:
  """The (K, D) rows of a basis given up front, checked finite and orthonormal (`BasisError`)."""
  if isinstance(basis, Basis):
    check_basis(basis)
    return jnp.asarray(basis.vectors, jnp.float32)
  rows = np.asarray(basis, np.float32)
  rows = rows[None] if rows.ndim == 1 else rows
  labels = tuple(f"{term}/{index}" for index in range(rows.shape[0])) if rows.ndim == 2 else ()
  check_basis(Basis(vectors=rows, fitted_step=np.int32(-1), site=site, labels=labels))
  return jnp.asarray(rows)


def check_one_source(given: Any, key: str | None, *, what: str, term: str) -> None:
  if (given is None) == (key is None):
    raise BadInputError(f"loss term {term!r}: give exactly one of {what}= or {what}_key= "
                        f"(got {what}={'None' if given is None else '...'}, {what}_key={key!r})")


def refreshed_rows(run: RunView, key: str, *, site: str, term: str) -> jax.Array:
  """The (K, D) rows of refresher ``key``'s value (a `Basis`, an array or site -> either)."""
  if key not in run.refreshed:
    raise BadInputError(f"loss term {term!r} reads the refresher {key!r}, but the run has "
                        f"refreshers {sorted(run.refreshed)}; add the refresher that keeps it")
  value = run.refreshed[key]
  if isinstance(value, Mapping):
    if site not in value:
      raise BadInputError(f"loss term {term!r}: refresher {key!r} has no entry for site {site!r} "
                          f"(it has {sorted(value)})")
    value = value[site]
  rows = value.vectors if isinstance(value, Basis) else jnp.asarray(value)
  return rows[None] if rows.ndim == 1 else rows


def check_width(act: jax.Array, rows_KxD: jax.Array, *, site: str, term: str) -> None:
  if act.shape[-1] != rows_KxD.shape[-1]:
    raise BadInputError(f"loss term {term!r}: directions of shape {rows_KxD.shape} do not fit site "
                        f"{site!r}, whose activation has shape {act.shape}")


def coordinates(act: jax.Array, rows_KxD: jax.Array) -> jax.Array:
  """``act @ rows^T``: (..., D) -> (..., K), the coordinates along orthonormal rows, in float32."""
  return act.astype(jnp.float32) @ rows_KxD.astype(jnp.float32).T


def per_example_rows(act: jax.Array) -> jax.Array:
  """(B, ..., D) -> (B, F): each example's activation flattened, in float32."""
  return act.reshape(act.shape[0], -1).astype(jnp.float32)
