"""Concept penalty: the size of a site's activation along interpretable directions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from landscape.directions import Basis
from landscape.objectives._composition import Term
from landscape.objectives._composition import TermInputs
from landscape.objectives._composition import Weight
from landscape.objectives._fields import check_one_source
from landscape.objectives._fields import check_width
from landscape.objectives._fields import checked_rows
from landscape.objectives._fields import coordinates
from landscape.objectives._fields import refreshed_rows
from landscape.sites import BadInputError

NORMS = ("l2", "l1")


def concept_penalty(site: str, basis: Basis | jax.Array | np.ndarray | None = None, *,
                    basis_key: str | None = None, norm: str = "l2", weight: Weight = 1.0,
                    name: str = "concept_penalty") -> Term:
  """Penalises the activation's coordinates c = act @ Q^T along orthonormal rows Q (K, D) at ``site``.

  Value: the mean over examples (and positions, for (B, T, D) sites) of ``sum_k c_k^2`` ("l2": the
  squared norm of the activation's component in span(Q), so it does not depend on which orthonormal
  basis of the span is given) or of ``sum_k |c_k|`` ("l1": favours few non-zero coordinates, and
  does depend on the rows). Metric ``mean_abs_coordinate``: mean |c_k| over examples and rows.

  Args:
    site: the site read (declared, so it is captured in the training forward pass).
    basis: a `Basis` or (K, D) array with orthonormal rows, fixed for the run.
    basis_key: instead, read the rows each step from ``inputs.run.refreshed[basis_key]`` (a basis
      refitted during training by a refresher of that name; a `Basis`, an array or site -> either).
    norm: "l2" (default) or "l1".
  """
  check_one_source(basis, basis_key, what="basis", term=name)
  if norm not in NORMS:
    raise BadInputError(f"loss term {name!r}: norm={norm!r}; expected one of {NORMS}")
  fixed_rows = None if basis is None else checked_rows(basis, site=site, term=name)

  def fn(inputs: TermInputs):
    rows_KxD = fixed_rows if fixed_rows is not None else refreshed_rows(
        inputs.run, basis_key, site=site, term=name)
    act = inputs.acts[site]
    check_width(act, rows_KxD, site=site, term=name)
    coords = coordinates(act, rows_KxD)
    magnitudes = jnp.square(coords) if norm == "l2" else jnp.abs(coords)
    value = jnp.mean(jnp.sum(magnitudes, axis=-1))
    return value, {"mean_abs_coordinate": jnp.mean(jnp.abs(coords))}

  return Term(name=name, fn=fn, weight=weight, sites=(site,))
