"""Directions from statistics of activations: difference of class means, PCA, SAE decoder rows.

Each finder has a traceable core over JAX arrays (usable inside a jitted training step, e.g. by a
refresher) and a public function that runs the core, moves the rows to the host and builds a `Basis`
with `make_basis` (float64 orthonormalisation and a rank check naming the site).

Activations are rows ``acts_NxD``: one row per example (or per example and position; see
`landscape.directions.capture`). Per-row ``weights_N`` (0 or 1) let a fixed-shape array hold a
subset, such as the training rows of a split or the valid rows of a padded batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from landscape.sites import Basis
from landscape.sites import make_basis
from landscape.sites import BadInputError

_HIGHEST = jax.lax.Precision.HIGHEST


def _class_labels(labels: np.ndarray | jax.Array, num_classes: int | None, *, site: str,
                  what: str) -> tuple[np.ndarray, int]:
  """Host-side check of integer class labels (N,); returns them as int32 and the number of classes."""
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise BadInputError(f"{what} at site {site!r}: labels must be (N,), got shape {labels.shape}")
  if not np.issubdtype(labels.dtype, np.integer):
    if not np.all(labels == np.round(labels)):
      raise BadInputError(f"{what} at site {site!r}: labels must be integer classes, got dtype "
                          f"{labels.dtype}")
  labels = labels.astype(np.int32)
  if labels.size and labels.min() < 0:
    raise BadInputError(f"{what} at site {site!r}: negative class label {labels.min()}")
  inferred = int(labels.max()) + 1 if labels.size else 0
  num_classes = inferred if num_classes is None else num_classes
  if inferred > num_classes:
    raise BadInputError(f"{what} at site {site!r}: label {inferred - 1} >= num_classes={num_classes}")
  if num_classes < 2:
    raise BadInputError(f"{what} at site {site!r}: need at least 2 classes, got {num_classes}")
  return labels, num_classes


def _check_rows(acts_NxD: np.ndarray | jax.Array, *, site: str, what: str,
                num_rows: int | None = None) -> None:
  """Host-side: (N, D) with N matching the labels, and finite values, or a message naming the site."""
  shape = tuple(np.shape(acts_NxD))
  if len(shape) != 2:
    raise BadInputError(f"{what} at site {site!r}: activations must be (N, D) rows, got shape {shape}")
  if num_rows is not None and shape[0] != num_rows:
    raise BadInputError(f"{what} at site {site!r}: {shape[0]} activation rows (shape {shape}) but "
                        f"{num_rows} labels")
  if not np.all(np.isfinite(np.asarray(acts_NxD))):
    raise BadInputError(f"{what} at site {site!r}: non-finite activations in shape {shape}")


def class_directions(label_names: Sequence[str] | None, num_classes: int,
                     field: str) -> tuple[str, ...]:
  """The labels of the C - 1 class directions (classes 1..C-1 against the rest)."""
  names = list(label_names) if label_names is not None else [str(c) for c in range(num_classes)]
  if len(names) != num_classes:
    raise BadInputError(f"{len(names)} label names for {num_classes} classes")
  return tuple(f"{field}={names[c]}" for c in range(1, num_classes))


def weighted_class_means(acts_NxD: jax.Array, labels_N: jax.Array, weights_N: jax.Array,
                         num_classes: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(class means (C, D), class weights (C,), grand mean (D,)), traceable.

  The grand mean is the weighted mean of all rows, so it equals the class means weighted by their
  counts. A class without rows has mean 0 (its count is 0).
  """
  acts = acts_NxD.astype(jnp.float32)
  weights = weights_N.astype(jnp.float32)
  onehot_NxC = jax.nn.one_hot(labels_N, num_classes, dtype=jnp.float32) * weights[:, None]
  counts_C = jnp.sum(onehot_NxC, axis=0)
  grand_D = (jnp.einsum("n,nd->d", weights, acts, precision=_HIGHEST)
             / jnp.maximum(jnp.sum(weights), 1e-12))
  # Means of the centred rows, shifted back: the sums stay small, so float32 keeps its digits.
  centred = acts - grand_D[None, :]
  sums_CxD = jnp.einsum("nc,nd->cd", onehot_NxC, centred, precision=_HIGHEST)
  means_CxD = sums_CxD / jnp.maximum(counts_C, 1e-12)[:, None] + grand_D[None, :]
  return means_CxD, counts_C, grand_D


def diff_of_means_rows(acts_NxD: jax.Array, labels_N: jax.Array, weights_N: jax.Array,
                       num_classes: int) -> jax.Array:
  """Rows (C - 1, D): class mean minus grand mean for classes 1..C-1, traceable.

  The C centred class means, weighted by their counts, sum to zero, so they span at most C - 1
  dimensions and class 0's row is implied by the others. For two classes the single row is
  (n0 / N) (mean_1 - mean_0): the direction from class 0 to class 1.
  """
  means_CxD, _, grand_D = weighted_class_means(acts_NxD, labels_N, weights_N, num_classes)
  return means_CxD[1:] - grand_D[None, :]


_diff_of_means_rows = jax.jit(diff_of_means_rows, static_argnums=(3,))


def diff_of_means(acts_NxD: np.ndarray | jax.Array, labels_N: np.ndarray | jax.Array, *, site: str,
                  num_classes: int | None = None, field: str = "concept",
                  label_names: Sequence[str] | None = None, source: str = "") -> Basis:
  """The difference of class means as an orthonormal basis (rank C - 1).

  Two classes: one direction, from the mean of class 0 to the mean of class 1 (unit norm). More
  classes: the rows mean_c - mean (c = 1..C-1, mean the grand mean over all rows), orthonormalised
  in order, so the first row points along class 1's offset.

  Raises:
    ValueError: bad shapes, non-finite activations, fewer than two classes, or a class with no row.
    BasisError: the class offsets are rank-deficient (e.g. two classes with equal means).
  """
  labels, num_classes = _class_labels(labels_N, num_classes, site=site, what="diff_of_means")
  _check_rows(acts_NxD, site=site, what="diff_of_means", num_rows=labels.shape[0])
  missing = sorted(set(range(num_classes)) - set(np.unique(labels).tolist()))
  if missing:
    raise BadInputError(f"diff_of_means at site {site!r}: class(es) {missing} have no rows among "
                        f"{labels.shape[0]} (activations {tuple(np.shape(acts_NxD))})")
  rows = _diff_of_means_rows(jnp.asarray(acts_NxD, jnp.float32), jnp.asarray(labels),
                             jnp.ones(labels.shape, jnp.float32), num_classes)
  return make_basis(np.asarray(rows), site=site, method="diff_of_means", source=source,
                    labels=class_directions(label_names, num_classes, field))


@dataclasses.dataclass(frozen=True)
class PCAResult:
  """Top principal components of centred activations.

  Attributes:
    basis: the components as rows (k, D), in decreasing order of variance; each row's entry of
      largest magnitude is positive.
    explained_variance: (k,) variance along each component (divided by N - 1).
    explained_variance_ratio: (k,) that variance over the total variance.
    mean: (D,) the mean that was subtracted.
  """

  basis: Basis
  explained_variance: np.ndarray
  explained_variance_ratio: np.ndarray
  mean: np.ndarray


def principal_components(acts_NxD: jax.Array, num_components: int
                         ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(components (k, D), variances (k,), total variance, mean (D,)), traceable.

  The covariance of the centred rows is formed with HIGHEST precision matmuls and diagonalised with
  `jnp.linalg.eigh`; signs are fixed so that each component's largest-magnitude entry is positive.
  """
  acts = acts_NxD.astype(jnp.float32)
  num_rows = acts.shape[0]
  mean_D = jnp.mean(acts, axis=0)
  centred = acts - mean_D[None, :]
  covariance_DxD = (jnp.einsum("nd,ne->de", centred, centred, precision=_HIGHEST)
                    / max(num_rows - 1, 1))
  eigenvalues, eigenvectors_DxD = jnp.linalg.eigh(covariance_DxD)
  order = jnp.argsort(-eigenvalues)[:num_components]
  components_KxD = eigenvectors_DxD[:, order].T
  largest = jnp.take_along_axis(components_KxD, jnp.argmax(jnp.abs(components_KxD), axis=1)[:, None],
                                axis=1)
  components_KxD = components_KxD * jnp.where(largest < 0, -1.0, 1.0)
  return components_KxD, eigenvalues[order], jnp.trace(covariance_DxD), mean_D


_principal_components = jax.jit(principal_components, static_argnums=(1,))


def pca(acts_NxD: np.ndarray | jax.Array, num_components: int, *, site: str,
        source: str = "") -> PCAResult:
  """The top ``num_components`` principal components of ``acts_NxD`` as a basis, with variances.

  Raises:
    ValueError: bad shapes, non-finite activations, or more components than dimensions or rows.
    BasisError: a component with (numerically) zero variance, when the rows span fewer dimensions.
  """
  _check_rows(acts_NxD, site=site, what="pca")
  num_rows, width = np.shape(acts_NxD)
  if not 1 <= num_components <= min(width, num_rows):
    raise BadInputError(f"pca at site {site!r}: num_components={num_components} must be in "
                        f"[1, min(D, N)] for activations of shape {(num_rows, width)}")
  components, variances, total, mean = _principal_components(jnp.asarray(acts_NxD, jnp.float32),
                                                             num_components)
  variances = np.asarray(variances, np.float64)
  floor = 1e-6 * max(float(variances[0]), 1e-30)
  if variances[-1] <= floor:
    raise BadInputError(f"pca at site {site!r}: component {int(np.argmax(variances <= floor))} of "
                        f"{num_components} has variance {variances[-1]:.3g}; the rows of shape "
                        f"{(num_rows, width)} span fewer dimensions")
  basis = make_basis(np.asarray(components), site=site, method="pca", source=source,
                     labels=tuple(f"pc{k}" for k in range(num_components)))
  return PCAResult(basis=basis, explained_variance=variances,
                   explained_variance_ratio=variances / max(float(total), 1e-30),
                   mean=np.asarray(mean))


def sae_basis(decoder_NxD: np.ndarray | jax.Array, features: Sequence[int] | np.ndarray, *,
              site: str, labels: Sequence[str] | None = None, source: str = "") -> Basis:
  """An orthonormal basis of the span of selected rows of a sparse autoencoder's decoder.

  Args:
    decoder_NxD: the decoder, one row per latent (N latents of width D).
    features: the selected latents: indices, or a boolean mask of length N.
    site: the site the decoder reconstructs.
    labels: one per selected latent; default ``"sae/{index}"``.

  Returns:
    ``make_basis(decoder[features])``: the first row points along the first selected latent.

  Raises:
    ValueError: a decoder that is not 2-D, an index out of range, or no latent selected.
    BasisError: the selected rows are rank-deficient, non-finite, or more than D.
  """
  decoder = np.asarray(decoder_NxD)
  if decoder.ndim != 2:
    raise BadInputError(f"sae_basis at site {site!r}: decoder must be (N, D), got shape {decoder.shape}")
  features = np.asarray(features)
  if features.dtype == bool:
    if features.shape != (decoder.shape[0],):
      raise BadInputError(f"sae_basis at site {site!r}: mask of shape {features.shape} for a decoder of "
                          f"shape {decoder.shape}")
    features = np.nonzero(features)[0]
  features = features.astype(np.int64).reshape(-1)
  if not features.size:
    raise BadInputError(f"sae_basis at site {site!r}: no latent selected")
  if features.min() < 0 or features.max() >= decoder.shape[0]:
    raise BadInputError(f"sae_basis at site {site!r}: latent indices {features.tolist()} out of range "
                        f"for a decoder of shape {decoder.shape}")
  labels = tuple(labels) if labels is not None else tuple(f"sae/{i}" for i in features.tolist())
  return make_basis(decoder[features], site=site, labels=labels, method="sae", source=source)
