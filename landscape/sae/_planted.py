"""A planted dictionary: activations built from known sparse features, to check that an SAE finds them.

    x = sum_i a_i f_i + noise

with N unit features f_i (Gaussian directions, normalised) in D dimensions, each active independently
with probability p, a nonnegative coefficient a_i ~ Exponential(1) when active (times a random sign
when ``signed``: then every feature needs two latents, one per sign), and isotropic Gaussian noise.
Drawn in JAX from (key, number of examples), so a stream of them is a pure function of (key, step).

An SAE recovers the dictionary when each true feature has a decoder row pointing along it: the mean
over true features of the largest cosine with any decoder row (MMCS) and the fraction of features
whose largest cosine exceeds 0.9 measure it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from landscape.sites import BadInputError


@dataclasses.dataclass(frozen=True, eq=False)
class PlantedDictionary:
  """The features and the law of their coefficients.

  Attributes:
    features_NxD: (N, D) float32, unit rows.
    probability: p, the chance each feature is active in an example.
    noise_std: the standard deviation of the Gaussian noise added to each coordinate.
    signed: coefficients are +-Exponential(1) (a fair random sign) instead of Exponential(1).
  """

  features_NxD: np.ndarray
  probability: float
  noise_std: float
  signed: bool = False

  @property
  def d_in(self) -> int:
    return self.features_NxD.shape[1]

  @property
  def num_features(self) -> int:
    return self.features_NxD.shape[0]

  def sample(self, key: jax.Array, num_examples: int) -> jax.Array:
    """(num_examples, D) float32 activations; traceable (``num_examples`` static)."""
    return sample_planted(key, jnp.asarray(self.features_NxD), num_examples,
                          probability=self.probability, noise_std=self.noise_std,
                          signed=self.signed)


def planted_dictionary(key: jax.Array, *, d_in: int, num_features: int, probability: float = 0.01,
                       noise_std: float = 0.01, signed: bool = False) -> PlantedDictionary:
  """N = ``num_features`` unit features in ``d_in`` dimensions: Gaussian directions from ``key``,
  normalised (in float64 on the host, so the features do not depend on the backend's rounding
  beyond that of the Gaussian draw)."""
  if d_in < 1 or num_features < 1:
    raise BadInputError(f"planted_dictionary: d_in={d_in} and num_features={num_features} must be "
                        ">= 1")
  if not 0.0 < probability <= 1.0:
    raise BadInputError(f"planted_dictionary: probability={probability} must be in (0, 1]")
  if not noise_std >= 0.0:
    raise BadInputError(f"planted_dictionary: noise_std={noise_std} must be >= 0")
  directions = np.asarray(jax.random.normal(key, (num_features, d_in), jnp.float32), np.float64)
  features = directions / np.linalg.norm(directions, axis=1, keepdims=True)
  return PlantedDictionary(features_NxD=features.astype(np.float32), probability=float(probability),
                           noise_std=float(noise_std), signed=bool(signed))


def sample_planted(key: jax.Array, features_NxD: jax.Array, num_examples: int, *,
                   probability: float, noise_std: float, signed: bool = False) -> jax.Array:
  """``num_examples`` draws of ``sum_i a_i f_i + noise`` over the rows f_i of ``features_NxD``
  (see the module docstring). Float32, (num_examples, D)."""
  active_key, coefficient_key, sign_key, noise_key = jax.random.split(key, 4)
  num_features, d_in = features_NxD.shape
  shape = (num_examples, num_features)
  active = jax.random.bernoulli(active_key, probability, shape)
  coefficients = jax.random.exponential(coefficient_key, shape, jnp.float32)
  if signed:
    coefficients = coefficients * jax.random.rademacher(sign_key, shape, jnp.float32)
  coefficients = jnp.where(active, coefficients, jnp.zeros((), jnp.float32))
  clean = jnp.matmul(coefficients, features_NxD.astype(jnp.float32),
                     precision=jax.lax.Precision.HIGHEST)
  return clean + noise_std * jax.random.normal(noise_key, (num_examples, d_in), jnp.float32)


@dataclasses.dataclass(frozen=True)
class Recovery:
  """How well decoder rows recover planted features.

  Attributes:
    mmcs: the mean over true features of their largest cosine with a decoder row.
    fraction_above: the fraction of true features whose largest cosine exceeds ``threshold``.
    threshold: that cosine (0.9 by default).
    max_cosine: (N,) float64, each true feature's largest cosine.
  """

  mmcs: float
  fraction_above: float
  threshold: float
  max_cosine: np.ndarray


def feature_recovery(decoder_FxD: np.ndarray | jax.Array, features_NxD: np.ndarray, *,
                     threshold: float = 0.9) -> Recovery:
  """MMCS and the fraction of features above ``threshold`` of an SAE's decoder rows (F, D) against
  the true features (N, D), in float64 on the host. A zero decoder row has cosine 0 with
  everything. Signed cosines: a row pointing against a feature does not recover it (codes are
  nonnegative)."""
  decoder = np.asarray(decoder_FxD, np.float64)
  features = np.asarray(features_NxD, np.float64)
  if decoder.ndim != 2 or features.ndim != 2 or decoder.shape[1] != features.shape[1]:
    raise BadInputError(f"feature_recovery: decoder of shape {decoder.shape} and features of "
                        f"shape {features.shape}; expected (F, D) and (N, D) with the same D")
  decoder_norms = np.linalg.norm(decoder, axis=1, keepdims=True)
  units = decoder / np.where(decoder_norms > 0, decoder_norms, 1.0)
  features = features / np.linalg.norm(features, axis=1, keepdims=True)
  max_cosine = np.max(features @ units.T, axis=1)
  return Recovery(mmcs=float(np.mean(max_cosine)),
                  fraction_above=float(np.mean(max_cosine > threshold)),
                  threshold=float(threshold), max_cosine=max_cosine)
