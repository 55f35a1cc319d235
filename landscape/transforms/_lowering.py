"""Lowering directions given per parameter or at sites (through their links) to `Directions`, and
the checks that go with it: links, roles, paths, shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from landscape.sites import Basis
from landscape.sites import BasisError
from landscape.sites import ParamLink
from landscape.sites import check_basis
from landscape.sites import check_rows
from landscape.sites import path_string
from landscape.transforms._directions import Along
from landscape.transforms._directions import Directions
from landscape.transforms._directions import DirectionsError
from landscape.transforms._directions import ROLES
from landscape.transforms._directions import TouchedParameter
from landscape.transforms._directions import abbreviate


def normalize_links(site_links: Mapping[str, Sequence[ParamLink]], sites: Sequence[str],
                    roles: Sequence[str], *, what: str) -> dict[str, tuple[ParamLink, ...]]:
  """The links of each site (sorted), role-filtered, paths as tuples of str; raises for a site
  without links (with these roles), a bad role or a negative stack index."""
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
          f"there; site_links has links for {len(site_links)} sites: "
          f"{abbreviate(sorted(site_links))}")
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


def site_alongs(links: Mapping[str, tuple[ParamLink, ...]]) -> tuple[Along, ...]:
  """One `Along` per link, sites in sorted order, each site's links in order."""
  return tuple(Along(target=site, path=path_string(link.path), axis=link.axis, index=link.index,
                     link=link)
               for site in sorted(links) for link in links[site])


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
  links = normalize_links(site_links, sites, roles, what="touched_parameters")
  return [along.touched() for along in site_alongs(links)]


def param_directions(directions: Any, *, params: Any = None,
                     extra_arg: str | None = None) -> Directions:
  """Directions per parameter leaf, validated and lowered.

  Args:
    directions: a pytree mirroring the params; each leaf None (leave it alone) or an array
      (K, *leaf.shape) whose K rows, flattened in C order, are orthonormal. None may stand for a
      subtree.
    params: the params (arrays or `jax.ShapeDtypeStruct`s); when given, every direction's path and
      shape are checked against them now (otherwise at the transform's init).
    extra_arg: the keyword through which new directions (a pytree like ``directions``; None leaves
      keep the held ones) arrive each step; None when fixed.

  Raises:
    BasisError: directions with fewer than 2 dimensions, non-finite entries, more rows than the
      leaf has entries, or rows that are not orthonormal; the message names the path and shape.
    DirectionsError: a path missing from ``params`` or a shape that does not match its leaf.
  """
  flat = jax.tree_util.tree_flatten_with_path(directions, is_leaf=lambda value: value is None)[0]
  bases, alongs = {}, []
  for keypath, leaf_directions in flat:
    if leaf_directions is None:
      continue
    path = path_string(keypath)
    owner = f"param_directions: parameter {path!r}"
    if isinstance(leaf_directions, Basis):
      raise DirectionsError(f"{owner}: got a Basis; bases at sites go through "
                            f"site_directions(bases, site_links)")
    shape = tuple(jnp.shape(leaf_directions))
    if len(shape) < 2:
      raise BasisError(f"{owner}: directions of shape {shape}; expected (K, *leaf.shape)")
    if not isinstance(leaf_directions, jax.core.Tracer):
      size = int(jnp.size(leaf_directions)) // shape[0]
      if shape[0] > size:
        raise BasisError(f"{owner}: {shape[0]} directions for a leaf of {size} entries (shape "
                         f"{shape}); K must be <= the leaf size")
      check_rows(leaf_directions, owner=owner, row_ndim=len(shape) - 1)
    bases[path] = jnp.asarray(leaf_directions)
    alongs.append(Along(target=path, path=path, axis=None, index=None, link=None))
  if not bases:
    raise DirectionsError("param_directions: every leaf is None; nothing to act on")
  result = Directions(kind="parameter", alongs=tuple(alongs), bases=bases, rows=bases,
                      extra_arg=extra_arg)
  if params is not None:
    result.check_params(params, what="param_directions")
  return result


def _site_basis(site: str, basis: Basis | Any) -> jax.Array:
  """The checked (K, D) rows of the basis given for ``site``."""
  if not isinstance(basis, Basis):
    vectors = jnp.asarray(basis)
    if vectors.ndim != 2:
      raise BasisError(f"basis at site {site!r}: expected a (K, D) array, got shape "
                       f"{tuple(vectors.shape)}")
    basis = Basis(vectors=vectors, fitted_step=jnp.asarray(-1, jnp.int32), site=site,
                  labels=tuple(f"{site}/{i}" for i in range(vectors.shape[0])))
  if basis.vectors.ndim != 2:
    raise BasisError(f"basis at site {site!r}: expected a (K, D) array, got shape "
                     f"{tuple(basis.vectors.shape)}; per-seed bases come through extra args")
  check_basis(basis, site=site)
  return basis.vectors


def site_directions(bases: Mapping[str, Basis | Any],
                    site_links: Mapping[str, Sequence[ParamLink]], *, params: Any = None,
                    roles: Sequence[str] = ROLES, extra_arg: str | None = None) -> Directions:
  """Orthonormal bases at sites, mapped onto the parameters through ``site_links``, validated and
  lowered (see `project_out` for the mapping rule and the order).

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
      orthonormal, or was fitted at another site; the message names the site and shape.
    DirectionsError: a site without links (for these roles), a bad role, or, with ``params``, a
      link path not in the params or a leaf whose size on the link's axis is not the basis width;
      the message names the site, the path and the shapes.
  """
  if not bases:
    raise DirectionsError("site_directions: no bases given")
  vectors = {site: _site_basis(site, bases[site]) for site in sorted(bases)}
  links = normalize_links(site_links, list(vectors), roles, what="site_directions")
  result = Directions(kind="site", alongs=site_alongs(links), bases=vectors, rows=vectors,
                      extra_arg=extra_arg)
  if params is not None:
    result.check_params(params, what="site_directions")
  return result


def as_directions(directions: Any) -> Directions:
  """``directions`` if already lowered, else a per-parameter pytree through `param_directions`."""
  if isinstance(directions, Directions):
    return directions
  if isinstance(directions, Mapping) and any(isinstance(value, Basis)
                                             for value in directions.values()):
    raise DirectionsError("bases at sites must be mapped to parameters first: "
                          "site_directions(bases, site_links)")
  return param_directions(directions)
