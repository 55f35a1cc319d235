"""An SAE is directions: its decoder rows, as a dictionary for the gradient transforms, as bases and
vectors for interventions, and by name through labels.

Every function here takes the features the same way, resolved once by `select_features`: an
index, a sequence of indices, a bool mask (F,), or a name (or names) of `FeatureLabels`. The
directions come from the library's one implementation of each use:

- transforms (`attribute`, `scale_along`, `project_out` of the span of selected features):
  `feature_directions` -> `landscape.transforms.dictionary_directions`;
- a `Basis` of their span: `feature_basis` -> `landscape.directions.sae_basis`;
- interventions: `steer_feature`, `ablate_features`, `clamp_feature` -> `landscape.interventions`
  (``steer``, ``ablate``, ``clamp``); `clamp_codes` sets the SAE's own codes instead.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape.directions import sae_basis
from landscape.interventions import BackwardOnly
from landscape.interventions import ablate
from landscape.interventions import clamp
from landscape.interventions import steer
from landscape.sae._architectures import SAE
from landscape.sites import BadInputError
from landscape.sites import Basis
from landscape.sites import ParamLink
from landscape.transforms import Directions
from landscape.transforms import dictionary_directions

Features = int | Sequence[int] | np.ndarray | str | Sequence[str]


@dataclasses.dataclass(frozen=True)
class FeatureLabels:
  """Names of an SAE's features: each name -> the latent indices it stands for (build with
  `feature_labels`, which checks them).

  Attributes:
    d_sae: the SAE's number of latents.
    names: name -> sorted, distinct indices in [0, d_sae), read-only.
  """

  d_sae: int
  names: Mapping[str, tuple[int, ...]]

  def indices(self, name: str) -> np.ndarray:
    """The int64 indices named ``name``."""
    if name not in self.names:
      raise BadInputError(f"FeatureLabels: no feature named {name!r}; known: {sorted(self.names)}")
    return np.asarray(self.names[name], np.int64)

  def mask(self, name: str) -> np.ndarray:
    """(d_sae,) bool, True at the indices named ``name``."""
    mask = np.zeros(self.d_sae, bool)
    mask[self.indices(name)] = True
    return mask


def feature_labels(names: Mapping[str, int | Sequence[int]], *, d_sae: int) -> FeatureLabels:
  """Validated `FeatureLabels`: every name non-empty, with at least one index, all in
  [0, d_sae)."""
  checked = {}
  for name, indices in names.items():
    if not isinstance(name, str) or not name:
      raise BadInputError(f"feature_labels: names must be non-empty strings; got {name!r}")
    array = np.atleast_1d(np.asarray(indices))
    if array.size == 0 or not np.issubdtype(array.dtype, np.integer) or array.ndim != 1:
      raise BadInputError(f"feature_labels: {name!r} -> {indices!r}; expected one or more int "
                          f"indices")
    if array.min() < 0 or array.max() >= d_sae:
      raise BadInputError(f"feature_labels: {name!r} -> indices {array.tolist()} outside "
                          f"[0, d_sae={d_sae})")
    checked[name] = tuple(sorted(set(int(i) for i in array)))
  return FeatureLabels(d_sae=int(d_sae), names=types.MappingProxyType(checked))


def select_features(features: Features, *, d_sae: int, labels: FeatureLabels | None = None
                    ) -> np.ndarray:
  """The int64 indices ``features`` stands for: an index, indices, a bool mask (d_sae,), a name of
  ``labels``, or names (their indices, concatenated in order, duplicates dropped)."""
  if isinstance(features, str) or (
      isinstance(features, Sequence) and features and all(isinstance(f, str) for f in features)):
    if labels is None:
      raise BadInputError(f"select_features: features given by name ({features!r}) need labels")
    if labels.d_sae != d_sae:
      raise BadInputError(f"select_features: labels for d_sae={labels.d_sae}, SAE has "
                          f"d_sae={d_sae}")
    names = [features] if isinstance(features, str) else list(features)
    indices = np.concatenate([labels.indices(name) for name in names])
    _, first = np.unique(indices, return_index=True)
    return indices[np.sort(first)]
  array = np.asarray(features)
  if array.dtype == np.bool_:
    if array.shape != (d_sae,):
      raise BadInputError(f"select_features: mask of shape {array.shape}; expected ({d_sae},)")
    return np.nonzero(array)[0].astype(np.int64)
  array = np.atleast_1d(array)
  if not np.issubdtype(array.dtype, np.integer) or array.ndim != 1 or array.size == 0:
    raise BadInputError(f"select_features: {features!r} is not an index, indices, a mask or a name")
  if array.min() < 0 or array.max() >= d_sae:
    raise BadInputError(f"select_features: indices {array.tolist()} outside [0, d_sae={d_sae})")
  return array.astype(np.int64)


def _one_feature(sae: SAE, feature: Features, labels: FeatureLabels | None, what: str) -> int:
  indices = select_features(feature, d_sae=sae.d_sae, labels=labels)
  if indices.size != 1:
    raise BadInputError(f"{what}: {feature!r} stands for {indices.size} features "
                        f"{indices.tolist()}; give one")
  return int(indices[0])


def _row_labels(features: Features, indices: np.ndarray, site: str) -> tuple[str, ...]:
  if isinstance(features, str):
    return (features,) if indices.size == 1 else tuple(f"{features}/{i}" for i in indices)
  return tuple(f"{site}/latent{i}" for i in indices)


def feature_basis(sae: SAE, features: Features, *, site: str, labels: FeatureLabels | None = None,
                  source: str = "") -> Basis:
  """An orthonormal `Basis` (method "sae") of the span of the features' decoder rows, the first row
  along the first feature (`landscape.directions.sae_basis`); rows are labelled by name when the
  features are given by one name."""
  indices = select_features(features, d_sae=sae.d_sae, labels=labels)
  return sae_basis(np.asarray(sae.W_dec, np.float64), indices, site=site,
                                  labels=_row_labels(features, indices, site), source=source)


def feature_directions(sae: SAE, site_links: Mapping[str, Sequence[ParamLink]], *, site: str,
                       features: Features | None = None, labels: FeatureLabels | None = None,
                       **options: Any) -> Directions:
  """The SAE's decoder as a dictionary at ``site`` for `project_out`, `scale_along` and
  `attribute` (`landscape.transforms.dictionary_directions`), over the selected features (every
  feature when None).

  ``options`` go to `dictionary_directions` (``params``, ``roles``, ``rtol``, ``extra_arg``). For
  an SAE that changes during training, build with ``extra_arg`` and refresh the span with
  ``transforms.span_refresher(directions, every=N, source=lambda run: {site:
  run.refreshed[name].W_dec})``.
  """
  chosen = None if features is None else select_features(features, d_sae=sae.d_sae, labels=labels)
  return dictionary_directions({site: sae.W_dec}, {site: chosen}, site_links, **options)


def steer_feature(sae: SAE, feature: Features, alpha: float | jax.Array, *,
                  labels: FeatureLabels | None = None, backward_only: bool = False):
  """Adds ``alpha`` times the feature's decoder row (`landscape.interventions.steer`): what raising
  its code by ``alpha`` adds to the reconstruction."""
  index = _one_feature(sae, feature, labels, "steer_feature")
  return steer(sae.W_dec[index], alpha, backward_only=backward_only)


def ablate_features(sae: SAE, features: Features, *, site: str,
                    labels: FeatureLabels | None = None, mean: jax.Array | None = None,
                    backward_only: bool = False):
  """Removes the activation's component in the span of the features' decoder rows, or sets it to
  ``mean``'s (`landscape.interventions.ablate` of `feature_basis`)."""
  basis = feature_basis(sae, features, site=site, labels=labels)
  return ablate(basis, mean=mean, backward_only=backward_only)


def clamp_feature(sae: SAE, feature: Features, value: float | jax.Array, *,
                  labels: FeatureLabels | None = None, backward_only: bool = False):
  """Sets the activation's coordinate along the feature's unit decoder direction to ``value``
  (`landscape.interventions.clamp`). Compare `clamp_codes`, which sets the SAE's code."""
  index = _one_feature(sae, feature, labels, "clamp_feature")
  row = jnp.asarray(sae.W_dec[index], jnp.float32)
  return clamp(row / jnp.linalg.norm(row), value, backward_only=backward_only)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class ClampCodes:
  """Sets the SAE's codes of some latents: ``act + (values - codes(act)[idx]) @ W_dec[idx]``.

  Everything else is kept: the other latents' contributions and what the SAE does not reconstruct
  (its error), as in feature clamping (Templeton et al. 2024). A pytree: its SAE and values may be
  traced.
  """

  sae: SAE
  indices: jax.Array
  values: jax.Array

  @property
  def width(self) -> int:
    return self.sae.d_in

  def __call__(self, act: jax.Array) -> jax.Array:
    codes = self.sae.encode(act)[..., self.indices]
    values = jnp.broadcast_to(jnp.asarray(self.values, codes.dtype), self.indices.shape)
    change = (jnp.reshape(values, (1,) * (codes.ndim - 1) + values.shape) - codes)
    return act + (change @ self.sae.W_dec[self.indices]).astype(act.dtype)


def clamp_codes(sae: SAE, features: Features, values: float | jax.Array, *,
                labels: FeatureLabels | None = None, backward_only: bool = False):
  """A `ClampCodes` intervention setting the features' codes to ``values`` (a scalar or one per
  feature); 0 ablates them in the SAE's own terms. Wrapped in
  `landscape.interventions.BackwardOnly` when ``backward_only``."""
  indices = select_features(features, d_sae=sae.d_sae, labels=labels)
  intervention = ClampCodes(sae=sae, indices=jnp.asarray(indices, jnp.int32),
                            values=jnp.asarray(values, jnp.float32))
  return BackwardOnly(intervention) if backward_only else intervention
