"""Dictionaries: the span of selected rows of an (N, D) dictionary, lowered to an orthonormal basis
of that span, and re-estimated on a schedule by a refresher of the training loop.

A dictionary (an SAE decoder, N may exceed D; rows need be neither unit-norm nor orthogonal) and a
selection (indices or a mask) become `Directions` whose basis at each site is (R, D), R = min(S, D)
for S selected indices or min(N, D) for a mask or all rows: a step costs O(R D) per linked row,
whatever N is. When the dictionary or the selection changes during training (a live SAE), the
refresher made by `span_refresher` recomputes that basis every ``every`` steps, and the transform
receives it through its extra arg:

    directions = transforms.dictionary_directions({site: decoder}, {site: chosen}, links,
                                                  extra_arg="span")
    refresher = transforms.span_refresher(directions, every=50,
                                          source=lambda run: {site: run.refreshed["sae"]})
    training.train(..., refreshers=[sae_refresher, refresher],
                   optimizer_extra_args=lambda state: {"span": state.refreshed["span"]})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from landscape.sites import BasisError
from landscape.sites import ParamLink
from landscape.sites import check_rows
from landscape.transforms._directions import Directions
from landscape.transforms._directions import DirectionsError
from landscape.transforms._directions import ROLES
from landscape.transforms._directions import compute_dtype
from landscape.transforms._lowering import normalize_links
from landscape.transforms._lowering import site_alongs


class DictionarySelection(NamedTuple):
  """A dictionary and/or a selection for one site, as a span refresher's source gives them.

  dictionary_NxD: (N, D), or None to keep the one given at construction.
  selected: int indices (S,) or a bool mask (N,) of the same form and shape as at construction, or
    None to keep the one given at construction.
  """

  dictionary_NxD: jax.Array | None = None
  selected: jax.Array | None = None


def span_basis(dictionary_NxD: jax.Array, selected: jax.Array | None = None, *,
               rtol: float = 1e-4) -> jax.Array:
  """An orthonormal basis (R, D) of the span of the selected rows of a dictionary; traceable.

  ``selected`` is int indices (S,) (R = min(S, D)), a bool mask (N,) or None (R = min(N, D)).
  Rows of the result beyond the span's rank (singular values <= ``rtol`` times the largest) are
  zero, so R is static whatever the selection. Cost O(S D R) via an SVD in float32 (or wider).
  """
  dictionary = jnp.asarray(dictionary_NxD)
  dtype = compute_dtype(dictionary.dtype)
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


def _span_basis_float64(rows: np.ndarray, rtol: float) -> np.ndarray:
  if rows.shape[0] == 0:
    return np.zeros((0, rows.shape[1]))
  _, singular_values, vt = np.linalg.svd(rows, full_matrices=False)
  keep = singular_values > rtol * singular_values[0]
  return vt * keep[:, None]


def _selected_rows(host: np.ndarray, chosen: Any, *, owner: str) -> np.ndarray:
  """The rows ``chosen`` selects from ``host`` (N, D), checked."""
  chosen = np.asarray(chosen)
  if chosen.dtype == np.bool_:
    if chosen.shape != (host.shape[0],):
      raise BasisError(f"{owner}: mask of shape {chosen.shape} for a dictionary of shape "
                       f"{host.shape}; expected ({host.shape[0]},)")
    return host * chosen[:, None]
  if np.issubdtype(chosen.dtype, np.integer) and chosen.ndim == 1:
    if chosen.size and (chosen.min() < 0 or chosen.max() >= host.shape[0]):
      raise BasisError(f"{owner}: selected indices span [{chosen.min()}, {chosen.max()}], outside "
                       f"[0, {host.shape[0]}) (shape {host.shape})")
    return host[chosen]
  raise BasisError(f"{owner}: selected must be 1-D int indices or a bool mask of shape "
                   f"({host.shape[0]},); got shape {chosen.shape}, dtype {chosen.dtype}")


def dictionary_directions(dictionaries: Mapping[str, Any],
                          selected: Mapping[str, Any] | None,
                          site_links: Mapping[str, Sequence[ParamLink]], *, params: Any = None,
                          roles: Sequence[str] = ROLES, rtol: float = 1e-4,
                          extra_arg: str | None = None) -> Directions:
  """The span of selected rows of a (possibly overcomplete, non-orthonormal) dictionary at sites,
  lowered to its orthonormal basis (computed here in float64), mapped as `site_directions`.

  `project_out` makes the update orthogonal to every selected row, up to singular values of the
  selection at or below ``rtol`` times the largest; `scale_along` takes one gain per site;
  `attribute` reports along every row of the dictionary (N,).

  Args:
    dictionaries: site -> (N, D) rows.
    selected: site -> int indices (S,), bool mask (N,), or None (all rows); None for all sites.
    site_links: the model's site -> links.
    params: when given, links are checked against them now (otherwise at the transform's init).
    roles: which links act: "writes", "reads" or both.
    rtol: relative singular-value cut for the span's rank.
    extra_arg: the keyword through which new span bases (site -> (R, D), the value of
      `span_refresher`) arrive each step; None when fixed.

  Raises:
    BasisError: a dictionary that is not 2-D or has non-finite entries; bad selected indices.
    DirectionsError: as `site_directions`.
  """
  if not dictionaries:
    raise DirectionsError("dictionary_directions: no dictionaries given")
  selected = dict(selected or {})
  unknown = sorted(set(selected) - set(dictionaries))
  if unknown:
    raise DirectionsError(f"dictionary_directions: selections for sites {unknown} without a "
                          f"dictionary; dictionaries at {sorted(dictionaries)}")
  rows, chosen, bases = {}, {}, {}
  for site in sorted(dictionaries):
    owner = f"dictionary at site {site!r}"
    host = check_rows(dictionaries[site], owner=owner, orthonormal=False)
    chosen_rows = host
    if selected.get(site) is not None:
      chosen_rows = _selected_rows(host, selected[site], owner=owner)
      chosen[site] = jnp.asarray(np.asarray(selected[site]))
    else:
      chosen[site] = None
    dtype = jnp.asarray(dictionaries[site]).dtype
    dtype = dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32
    rows[site] = jnp.asarray(dictionaries[site], dtype)
    bases[site] = jnp.asarray(_span_basis_float64(chosen_rows, rtol), compute_dtype(dtype))
  links = normalize_links(site_links, list(rows), roles, what="dictionary_directions")
  result = Directions(kind="dictionary", alongs=site_alongs(links), bases=bases, rows=rows,
                      extra_arg=extra_arg, selected=chosen, rtol=float(rtol))
  if params is not None:
    result.check_params(params, what="dictionary_directions")
  return result


Source = Callable[[Any], Mapping[str, Any]] | Mapping[str, Any] | None


@dataclasses.dataclass(frozen=True, eq=False)
class SpanRefresher:
  """Re-estimates the span bases of dictionary directions every ``every`` steps (`span_refresher`).

  A refresher of the training loop by duck typing (``name``, ``init``, ``update``): its value is
  site -> (R, D) span basis, what the directions' extra arg takes.

  Attributes:
    name: the key of its value among the loop's refreshed values.
    directions: the `dictionary_directions` whose bases it refreshes.
    every: the period in steps (step 0 included).
    source: run -> site -> `DictionarySelection` (or an (N, D) dictionary), any subset of the
      sites; or such a mapping, fixed; or None for the dictionaries and selections of
      ``directions``.
  """

  name: str
  directions: Directions
  every: int
  source: Source = None

  def init(self, key: jax.Array, params: Any) -> dict[str, jax.Array]:
    """The span bases of the dictionaries and selections given at construction."""
    del key, params
    return dict(self.directions.bases)

  def update(self, value: Mapping[str, jax.Array], *, params: Any, step: jax.Array,
             key: jax.Array, run: Any) -> dict[str, jax.Array]:
    """Recomputes every site's basis from the source when ``step % every == 0``; otherwise
    returns ``value``. With ``step`` unbatched (shared by the runs), the condition stays a branch
    under the loop's vmap and the source is read only when due."""
    del params, key

    def refresh():
      refreshed = dict(value)
      for site, (dictionary, selected) in self.resolve(run).items():
        refreshed[site] = span_basis(dictionary, selected, rtol=self.directions.rtol).astype(
            value[site].dtype)
      return refreshed

    return jax.lax.cond(step % self.every == 0, refresh, lambda: dict(value))

  def resolve(self, run: Any) -> dict[str, tuple[jax.Array, jax.Array | None]]:
    """site -> (dictionary, selection) to refresh from, parts not given falling back to those at
    construction; shapes checked when traced."""
    given = self.source(run) if callable(self.source) else self.source
    if given is None:
      given = {site: DictionarySelection() for site in self.directions.rows}
    what = f"span_refresher {self.name!r}"
    if not isinstance(given, Mapping):
      raise DirectionsError(f"{what}: the source must give site -> DictionarySelection (or an "
                            f"(N, D) dictionary); got {type(given).__name__}")
    resolved = {}
    for site, value in given.items():
      if site not in self.directions.rows:
        raise DirectionsError(f"{what}: the source names site {site!r}, which has no dictionary; "
                              f"known: {sorted(self.directions.rows)}")
      if not isinstance(value, DictionarySelection):
        value = DictionarySelection(dictionary_NxD=value)
      expected = tuple(self.directions.rows[site].shape)
      dictionary = (self.directions.rows[site] if value.dictionary_NxD is None
                    else value.dictionary_NxD)
      if tuple(jnp.shape(dictionary)) != expected:
        raise DirectionsError(f"{what}: dictionary at site {site!r} has shape "
                              f"{tuple(jnp.shape(dictionary))}; expected {expected}")
      before = self.directions.selected[site]
      selected = before if value.selected is None else value.selected
      if value.selected is not None:
        if before is None:
          raise DirectionsError(f"{what}: site {site!r} was built with all rows selected; a "
                                f"selection cannot be given later (build it with a mask to change "
                                f"it during training)")
        same_kind = (jnp.issubdtype(jnp.result_type(selected), jnp.bool_)
                     == jnp.issubdtype(before.dtype, jnp.bool_))
        if tuple(jnp.shape(selected)) != tuple(before.shape) or not same_kind:
          raise DirectionsError(
              f"{what}: selection at site {site!r} has shape {tuple(jnp.shape(selected))} and "
              f"dtype {jnp.result_type(selected)}; expected shape {tuple(before.shape)} and dtype "
              f"{before.dtype} as at construction")
      resolved[site] = (jnp.asarray(dictionary),
                        None if selected is None else jnp.asarray(selected))
    return resolved


def span_refresher(directions: Directions, *, every: int, source: Source = None,
                   name: str | None = None) -> SpanRefresher:
  """A refresher of the training loop that re-estimates a dictionary's span on a schedule.

  Its value, site -> (R, D) orthonormal basis of the span of the selected rows, starts as the
  basis of the dictionaries and selections given to ``directions`` and is recomputed (an SVD,
  O(S D R) per site) at every step that is a multiple of ``every``, from what ``source`` gives.
  Hand it to the transform through the directions' extra arg:
  ``optimizer_extra_args=lambda state: {directions.extra_arg: state.refreshed[refresher.name]}``.

  Args:
    directions: built by `dictionary_directions` with ``extra_arg`` set.
    every: the period in steps, >= 1.
    source: where each refresh reads the dictionaries and selections: a function of the loop's
      ``run`` (e.g. ``lambda run: {site: DictionarySelection(selected=run.refreshed["sae"].live)}``,
      a live SAE kept by another refresher listed earlier) returning site -> `DictionarySelection`
      or (N, D) array for any subset of the sites; or such a mapping of fixed arrays; or None, the
      arrays given to ``directions``. Shapes (and a selection's form) must be those given there.
    name: the refresher's name; the directions' ``extra_arg`` when None.

  Raises:
    DirectionsError: directions that are not a dictionary's or have no ``extra_arg`` (with no
      ``name``), or ``every`` < 1.
  """
  if not isinstance(directions, Directions) or directions.kind != "dictionary":
    raise DirectionsError(f"span_refresher: directions must come from dictionary_directions; got "
                          f"{getattr(directions, 'kind', type(directions).__name__)!r}")
  name = directions.extra_arg if name is None else name
  if not name:
    raise DirectionsError("span_refresher: give a name, or build the directions with extra_arg")
  if int(every) < 1:
    raise DirectionsError(f"span_refresher {name!r}: every={every} must be >= 1")
  return SpanRefresher(name=name, directions=directions, every=int(every), source=source)
