"""Judging an SAE: sparsity, reconstruction, dead latents, feature density, and what the model loses
when the SAE's reconstruction replaces the site's activation.

Activations and codes may have any leading axes; every position is an example. Each function is
traceable (jit, vmap over stacked SAEs) except `density_histogram`, which runs on the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape.sites import BadInputError


def _rows(array: jax.Array) -> jax.Array:
  array = jnp.asarray(array)
  return array.reshape(-1, array.shape[-1])


def _ratio_or_nan(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """numerator / denominator elementwise, NaN where the denominator is 0 (never inf)."""
  nonzero = denominator != 0
  return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1.0), jnp.nan)


def l0(codes: jax.Array) -> jax.Array:
  """The mean number of nonzero codes per example."""
  return jnp.mean(jnp.sum(_rows(codes) != 0, axis=-1).astype(jnp.float32))


def fraction_variance_explained(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  """Centred: ``1 - sum_d Var_n(x_nd - x_hat_nd) / sum_d Var_n(x_nd)`` (dictionary_learning's
  ``frac_variance_explained``).

  A constant offset of the reconstruction costs nothing, and predicting the mean scores 0. Compare
  `normalized_mse`, which is uncentred and per example. Float32.

  NaN when x does not vary (sum_d Var_n(x_nd) = 0: a single example, or every example the same):
  there is no variance to explain.
  """
  x = _rows(x).astype(jnp.float32)
  residual = x - _rows(x_hat).astype(jnp.float32)
  # Var(x) = Var(x - x_0): exactly 0 for identical rows, whose float32 mean need not be exact.
  variance = jnp.sum(jnp.var(x - x[:1], axis=0))
  return 1.0 - _ratio_or_nan(jnp.sum(jnp.var(residual, axis=0)), variance)


def normalized_mse(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  """Uncentred, per example: ``mean_n ||x_n - x_hat_n||^2 / ||x_n||^2`` (OpenAI's
  ``normalized_mean_squared_error``).

  Unlike `fraction_variance_explained`, each error is relative to the example's own squared norm
  (not to the variance about the mean), so activations with a large common offset score well
  merely by reconstructing the offset, and ``1 - normalized_mse`` is not the fraction of variance
  explained. Float32.

  NaN when any example is zero (||x_n|| = 0): its relative error is undefined, and dropping it
  silently would change what the mean is over.
  """
  x = _rows(x).astype(jnp.float32)
  error = jnp.sum(jnp.square(x - _rows(x_hat).astype(jnp.float32)), axis=-1)
  return jnp.mean(_ratio_or_nan(error, jnp.sum(jnp.square(x), axis=-1)))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DensityCounts:
  """How often each latent fired over a window of examples.

  Attributes:
    active: (F,) int32, the examples on which each latent was nonzero.
    num_tokens: int32 scalar, the examples seen.
  """

  active: jax.Array
  num_tokens: jax.Array

  @classmethod
  def zeros(cls, d_sae: int) -> "DensityCounts":
    return cls(active=jnp.zeros((d_sae,), jnp.int32), num_tokens=jnp.zeros((), jnp.int32))


def update_density(counts: DensityCounts, codes: jax.Array) -> DensityCounts:
  """``counts`` after the examples of ``codes`` (..., F)."""
  rows = _rows(codes)
  return DensityCounts(active=counts.active + jnp.sum(rows != 0, axis=0, dtype=jnp.int32),
                       num_tokens=counts.num_tokens + rows.shape[0])


def feature_density(codes_or_counts: jax.Array | DensityCounts) -> jax.Array:
  """(F,) float32: the fraction of examples on which each latent is nonzero, over the codes
  (..., F) given or the window a `DensityCounts` accumulated."""
  if isinstance(codes_or_counts, DensityCounts):
    return codes_or_counts.active / jnp.maximum(codes_or_counts.num_tokens, 1).astype(jnp.float32)
  return jnp.mean((_rows(codes_or_counts) != 0).astype(jnp.float32), axis=0)


def dead_fraction(density: jax.Array) -> jax.Array:
  """The fraction of latents that never fired over the window ``density`` (F,) was measured on
  (`feature_density` of that window's codes or counts)."""
  return jnp.mean((jnp.asarray(density) == 0).astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class DensityHistogram:
  """A histogram of log10 feature density over the latents that fired (SAELens's
  ``log10(feature_sparsity)`` plot); the dead ones are counted apart.

  Attributes:
    counts: (bins,) int64, latents per bin.
    edges: (bins + 1,) float64, bin edges in log10 density.
    num_dead: latents that never fired (density 0), in no bin.
  """

  counts: np.ndarray
  edges: np.ndarray
  num_dead: int


def density_histogram(density: jax.Array | np.ndarray, *, bins: int = 50,
                      log10_range: tuple[float, float] = (-8.0, 0.0)) -> DensityHistogram:
  """The histogram of ``log10(density)`` over ``bins`` equal bins of ``log10_range`` (densities
  below the range land in the first bin); density 0 is counted in ``num_dead``. On the host."""
  density = np.asarray(density, np.float64)
  if density.ndim != 1 or density.size == 0:
    raise BadInputError(f"density_histogram: density of shape {density.shape}; expected (F,) "
                        "with F >= 1")
  outside = ~((density >= 0) & (density <= 1))  # NaN counts as outside
  if np.any(outside):
    index = int(np.argmax(outside))
    raise BadInputError(f"density_histogram: density[{index}]={float(density[index])} is not in "
                        f"[0, 1] ({int(outside.sum())} of {density.size} entries outside)")
  if not isinstance(bins, (int, np.integer)) or bins < 1:
    raise BadInputError(f"density_histogram: bins={bins!r} must be an int >= 1")
  low, high = log10_range
  if not low < high:
    raise BadInputError(f"density_histogram: log10_range={log10_range!r} must be (low, high) with "
                        "low < high")
  alive = density[density > 0]
  values = np.clip(np.log10(alive), low, high)
  counts, edges = np.histogram(values, bins=bins, range=(low, high))
  return DensityHistogram(counts=counts, edges=edges, num_dead=int(density.size - alive.size))


def zero_ablation(act: jax.Array) -> jax.Array:
  """An intervention replacing the site's activation with zeros."""
  return jnp.zeros_like(act)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DownstreamMetrics:
  """What the model's next-token loss says of the SAE (float32 scalars, token-weighted means).

  Attributes:
    ce_clean, ce_sae, ce_zero: cross-entropy of the labels with the site's activation as it is,
      replaced by the SAE's reconstruction, replaced by zeros.
    ce_recovered: ``(ce_zero - ce_sae) / (ce_zero - ce_clean)``; 1 is a perfect SAE. NaN when
      ``ce_zero == ce_clean``: zero-ablating the site costs nothing, so there is no loss to
      recover (the site does not matter to this loss on these inputs).
    kl_sae, kl_zero: ``KL(clean || with the SAE)`` and ``KL(clean || zero-ablated)`` of the
      predicted distributions.
    kl_recovered: ``(kl_zero - kl_sae) / (kl_zero - kl_clean)``, with ``kl_clean = 0``. NaN when
      ``kl_zero == 0`` (zero ablation leaves every prediction as it was).
  """

  ce_clean: jax.Array
  ce_sae: jax.Array
  ce_zero: jax.Array
  ce_recovered: jax.Array
  kl_sae: jax.Array
  kl_zero: jax.Array
  kl_recovered: jax.Array


def _weighted_mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
  if weights is None:
    return jnp.mean(values)
  weights = jnp.asarray(weights, jnp.float32)
  return jnp.sum(values * weights) / jnp.sum(weights)


def label_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
                  ) -> jax.Array:
  """The mean (weighted by ``weights``, shaped like ``labels``) of ``-log softmax(logits)[label]``
  over logits (..., V) and int labels (...). Float32."""
  log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, jnp.asarray(labels)[..., None], axis=-1)[..., 0]
  return _weighted_mean(-picked, weights)


def kl_divergence(reference_logits: jax.Array, logits: jax.Array,
                  weights: jax.Array | None = None) -> jax.Array:
  """The mean over positions of ``KL(softmax(reference) || softmax(logits))``. Float32."""
  reference = jax.nn.log_softmax(jnp.asarray(reference_logits, jnp.float32), axis=-1)
  other = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  per_position = jnp.sum(jnp.exp(reference) * (reference - other), axis=-1)
  return _weighted_mean(per_position, weights)


LogitsWith = Callable[[Callable[[jax.Array], jax.Array] | None], jax.Array]


def model_logits_with(model: Any, params: Any, inputs: Any, *, site: str,
                      logits_of: Callable[[Any], jax.Array] | None = None) -> LogitsWith:
  """``intervention -> logits`` for a landscape `Model`: runs ``model.forward(params, inputs,
  interventions={site: intervention})`` (none when the intervention is None) and returns
  ``logits_of(outputs)`` (the outputs themselves by default). The site is checked now."""
  model.check_sites([site], what="model_logits_with")
  logits_of = (lambda outputs: outputs) if logits_of is None else logits_of

  def logits_with(intervention):
    interventions = None if intervention is None else {site: intervention}
    outputs, _ = model.forward(params, inputs, interventions=interventions)
    return logits_of(outputs)

  return logits_with


def downstream_metrics(logits_with: LogitsWith, labels: jax.Array, sae: Callable[[jax.Array],
                       jax.Array], *, weights: jax.Array | None = None) -> DownstreamMetrics:
  """CE loss and KL recovered when ``sae`` (any function act -> reconstruction; an SAE is one)
  replaces the site's activation, against zero ablation (as dictionary_learning's
  ``loss_recovered``).

  Args:
    logits_with: ``intervention or None -> logits (..., V)``: the model run with that
      intervention at the site (`model_logits_with` builds one from a landscape `Model`).
    labels: int (...), aligned with the logits' leading axes (shift next-token labels yourself).
    sae: the reconstruction, on the site's raw activations (fold any input normalisation in
      first: `fold_normalization`).
    weights: (...) per-position weights (a mask of real tokens), or None.
  """
  clean = logits_with(None)
  reconstructed = logits_with(sae)
  zeroed = logits_with(zero_ablation)
  ce_clean = label_cross_entropy(clean, labels, weights)
  ce_sae = label_cross_entropy(reconstructed, labels, weights)
  ce_zero = label_cross_entropy(zeroed, labels, weights)
  kl_sae = kl_divergence(clean, reconstructed, weights)
  kl_zero = kl_divergence(clean, zeroed, weights)
  return DownstreamMetrics(ce_clean=ce_clean, ce_sae=ce_sae, ce_zero=ce_zero,
                           ce_recovered=_ratio_or_nan(ce_zero - ce_sae, ce_zero - ce_clean),
                           kl_sae=kl_sae, kl_zero=kl_zero,
                           kl_recovered=_ratio_or_nan(kl_zero - kl_sae, kl_zero))
