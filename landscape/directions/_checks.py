"""Validation of bases against a model's sites, before anything is compiled."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from landscape.sites import Basis
from landscape.sites import BasisError
from landscape.sites import check_basis
from landscape.models import Model


def check_bases(model: Model, params: Any, example_inputs: Any, bases: Mapping[str, Basis]) -> None:
  """Raises unless every ``site -> Basis`` fits the model at that site.

  Checks, naming the site and the shapes: the site exists (`UnknownSiteError`, listing the model's
  sites); the value is a `Basis` whose ``site`` is the key; its width equals the site's activation
  width for ``example_inputs`` (shapes only: nothing runs); its entries are finite and its rows
  orthonormal (a rank-deficient set of directions cannot be), all as `BasisError`.
  """
  model.check_sites(bases, what=f"{model.name}: bases")
  shapes = model.site_shapes(params, example_inputs)
  for site, basis in bases.items():
    if not isinstance(basis, Basis):
      raise BasisError(f"basis at site {site!r}: expected a Basis, got {type(basis).__name__}; "
                       "build one with make_basis")
    if basis.site != site:
      raise BasisError(f"basis given for site {site!r} was fitted at site {basis.site!r} (vectors "
                       f"{tuple(basis.vectors.shape)})")
    shape = tuple(shapes[site].shape)
    if basis.vectors.shape[-1] != shape[-1]:
      raise BasisError(f"basis at site {site!r}: vectors of shape {tuple(basis.vectors.shape)} have "
                       f"width {basis.vectors.shape[-1]}, but the site's activation has shape "
                       f"{shape} (width {shape[-1]})")
    check_basis(basis, width=shape[-1])
