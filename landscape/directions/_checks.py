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
    shape = tuple(shapes[site].shape)
    check_basis(basis, site=site, width=shape[-1],
                width_of=f"the site's activation of shape {shape}")
