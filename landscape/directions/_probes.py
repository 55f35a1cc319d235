"""Linear probes: logistic (multinomial, L2) and ridge (closed form), and the bases they span.

The cores are traceable and take per-row weights (0 or 1), so a train/held-out split of a fixed-size
array is two masks: they run under jit and vmap (a probe per seed, per site) and inside a training
step. `logistic_probe` and `ridge_probe` wrap them for host arrays: they split, fit, measure and build
a `Basis` with `make_basis`.

The logistic fit is deterministic: features are standardised with the training rows' mean and
standard deviation, and the L2-regularised mean cross-entropy is minimised by Nesterov's accelerated
gradient with adaptive restart for a fixed number of steps, with step 1/L from the curvature bound
L = lambda_max(A^T W A) / 2 + l2 (A the standardised rows with a column of ones). The weights are then
mapped back to raw activation coordinates, so ``acts @ weights + bias`` gives the logits.

The basis of a C-class probe is the span of its centred weight vectors (the logits change only by
their differences): rows w_c - mean_c(w) for c = 1..C-1, orthonormalised in order. For two classes
that is one direction, pointing from class 0 to class 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from landscape.sites import Basis
from landscape.sites import make_basis
from landscape.directions._statistics import _HIGHEST
from landscape.directions._statistics import _check_rows
from landscape.directions._statistics import class_directions
from landscape.directions._statistics import _class_labels
from landscape.sites import BadInputError

_POWER_ITERATIONS = 32
_CURVATURE_MARGIN = 1.1


def _normalised(weights_N: jax.Array) -> jax.Array:
  weights = weights_N.astype(jnp.float32)
  return weights / jnp.maximum(jnp.sum(weights), 1e-12)


def _standardise(acts_NxD: jax.Array, share_N: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(standardised rows, mean (D,), scale (D,)) under the weights ``share_N`` (summing to 1).

  A feature that is constant on the weighted rows keeps scale 1 (it is all zeros once centred).
  """
  acts = acts_NxD.astype(jnp.float32)
  mean_D = jnp.einsum("n,nd->d", share_N, acts, precision=_HIGHEST)
  centred = acts - mean_D[None, :]
  variance_D = jnp.einsum("n,nd->d", share_N, jnp.square(centred), precision=_HIGHEST)
  constant = variance_D <= 1e-12 * jnp.maximum(jnp.max(variance_D), 1e-30)
  scale_D = jnp.where(constant, 1.0, jnp.sqrt(jnp.where(constant, 1.0, variance_D)))
  return centred / scale_D[None, :], mean_D, scale_D


def _largest_eigenvalue(gram_MxM: jax.Array) -> jax.Array:
  """The largest eigenvalue of a symmetric PSD matrix by power iteration from a fixed start."""
  start = jax.random.normal(jax.random.PRNGKey(0), gram_MxM.shape[:1], jnp.float32)

  def step(_, vector):
    product = jnp.matmul(gram_MxM, vector, precision=_HIGHEST)
    return product / jnp.maximum(jnp.linalg.norm(product), 1e-30)

  vector = jax.lax.fori_loop(0, _POWER_ITERATIONS, step, start / jnp.linalg.norm(start))
  return jnp.dot(vector, jnp.matmul(gram_MxM, vector, precision=_HIGHEST), precision=_HIGHEST)


def fit_logistic(acts_NxD: jax.Array, labels_N: jax.Array, weights_N: jax.Array, *,
                 num_classes: int, l2: float = 1e-2, steps: int = 300
                 ) -> tuple[jax.Array, jax.Array]:
  """A multinomial logistic probe fitted on the rows with weight 1; traceable and vmappable.

  Minimises ``sum_n share_n CE(z_n W + b, y_n) + l2/2 |W|^2`` over standardised rows z (share_n the
  weights normalised to sum 1), then returns the raw-coordinate weights (D, C) and bias (C,): the
  logits of a row x are ``x @ weights + bias``.
  """
  share_N = _normalised(weights_N)
  standardised_NxD, mean_D, scale_D = _standardise(acts_NxD, share_N)
  num_rows, width = standardised_NxD.shape
  augmented_NxM = jnp.concatenate([standardised_NxD, jnp.ones((num_rows, 1), jnp.float32)], axis=1)
  gram_MxM = jnp.einsum("n,nm,nk->mk", share_N, augmented_NxM, augmented_NxM, precision=_HIGHEST)
  # The softmax cross-entropy's Hessian in the logits is at most 1/2 in every direction.
  curvature = _CURVATURE_MARGIN * 0.5 * _largest_eigenvalue(gram_MxM) + l2
  targets_NxC = jax.nn.one_hot(labels_N, num_classes, dtype=jnp.float32)
  penalty_mask_M = jnp.concatenate([jnp.ones((width,), jnp.float32), jnp.zeros((1,), jnp.float32)])

  def gradient(params_MxC):
    logits = jnp.matmul(augmented_NxM, params_MxC, precision=_HIGHEST)
    residual = (jax.nn.softmax(logits, axis=-1) - targets_NxC) * share_N[:, None]
    return (jnp.einsum("nm,nc->mc", augmented_NxM, residual, precision=_HIGHEST)
            + l2 * penalty_mask_M[:, None] * params_MxC)

  def step(_, carry):
    params, lookahead, momentum = carry
    gradient_MxC = gradient(lookahead)
    updated = lookahead - gradient_MxC / curvature
    next_momentum = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * momentum ** 2))
    # Restart the momentum when it points uphill (O'Donoghue and Candes, 2015).
    restart = jnp.sum(gradient_MxC * (updated - params)) > 0
    next_momentum = jnp.where(restart, 1.0, next_momentum)
    extrapolation = jnp.where(restart, 0.0, (momentum - 1.0) / next_momentum)
    return updated, updated + extrapolation * (updated - params), next_momentum

  zeros = jnp.zeros((width + 1, num_classes), jnp.float32)
  params_MxC, _, _ = jax.lax.fori_loop(0, steps, step, (zeros, zeros, jnp.ones((), jnp.float32)))
  weights_DxC = params_MxC[:width] / scale_D[:, None]
  bias_C = params_MxC[width] - jnp.matmul(mean_D, weights_DxC, precision=_HIGHEST)
  return weights_DxC, bias_C


def fit_ridge(acts_NxD: jax.Array, targets_NxK: jax.Array, weights_N: jax.Array, *,
              l2: float = 1e-3) -> tuple[jax.Array, jax.Array]:
  """Ridge regression on the rows with weight 1, in closed form; traceable and vmappable.

  Solves ``(Xc^T S Xc + lam I) W = Xc^T S Yc`` with Xc, Yc centred by the weighted means, S the
  normalised weights and ``lam = l2 * trace(Xc^T S Xc) / D`` (so l2 is relative to the average
  feature variance and the fit does not depend on the activations' scale). Returns weights (D, K)
  and bias (K,): predictions are ``x @ weights + bias``.
  """
  share_N = _normalised(weights_N)
  acts = acts_NxD.astype(jnp.float32)
  targets = targets_NxK.astype(jnp.float32)
  mean_D = jnp.einsum("n,nd->d", share_N, acts, precision=_HIGHEST)
  target_mean_K = jnp.einsum("n,nk->k", share_N, targets, precision=_HIGHEST)
  centred = acts - mean_D[None, :]
  gram_DxD = jnp.einsum("n,nd,ne->de", share_N, centred, centred, precision=_HIGHEST)
  moments_DxK = jnp.einsum("n,nd,nk->dk", share_N, centred, targets - target_mean_K[None, :],
                           precision=_HIGHEST)
  width = gram_DxD.shape[0]
  ridge = l2 * jnp.trace(gram_DxD) / width + 1e-12
  factor = jax.scipy.linalg.cho_factor(gram_DxD + ridge * jnp.eye(width, dtype=jnp.float32))
  weights_DxK = jax.scipy.linalg.cho_solve(factor, moments_DxK)
  bias_K = target_mean_K - jnp.matmul(mean_D, weights_DxK, precision=_HIGHEST)
  return weights_DxK, bias_K


def class_weight_rows(weights_DxC: jax.Array) -> jax.Array:
  """Rows (C - 1, D): the centred weight vectors of classes 1..C-1 (see the module docstring)."""
  centred_DxC = weights_DxC - jnp.mean(weights_DxC, axis=1, keepdims=True)
  return centred_DxC[:, 1:].T


def _weighted_accuracy(predictions_N: jax.Array, labels_N: jax.Array, weights_N: jax.Array
                       ) -> jax.Array:
  correct = (predictions_N == labels_N).astype(jnp.float32)
  return jnp.sum(correct * weights_N) / jnp.maximum(jnp.sum(weights_N), 1e-12)


def _majority_rate(labels_N: np.ndarray, train_N: np.ndarray, heldout_N: np.ndarray) -> float:
  """Chance: the held-out accuracy of always predicting the training rows' most frequent class."""
  train_labels = labels_N[train_N > 0]
  majority = np.bincount(train_labels).argmax() if train_labels.size else 0
  heldout_labels = labels_N[heldout_N > 0]
  return float(np.mean(heldout_labels == majority)) if heldout_labels.size else float("nan")


def _split_masks(num_rows: int, heldout_fraction: float, seed: int,
                 groups_N: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(train, held-out) float32 masks over rows; rows of one group (an example) stay together.

  The held-out groups are the first ``round(heldout_fraction * num_groups)`` of a permutation drawn
  from ``np.random.default_rng(seed)``; a fraction of 0 holds nothing out.
  """
  if not 0.0 <= heldout_fraction < 1.0:
    raise BadInputError(f"heldout_fraction={heldout_fraction} must be in [0, 1)")
  groups = np.arange(num_rows) if groups_N is None else np.asarray(groups_N)
  unique, inverse = np.unique(groups, return_inverse=True)
  order = np.random.default_rng(seed).permutation(len(unique))
  num_heldout = int(round(heldout_fraction * len(unique)))
  heldout_group = np.zeros(len(unique), bool)
  heldout_group[order[:num_heldout]] = True
  heldout = heldout_group[inverse.reshape(-1)]
  return (~heldout).astype(np.float32), heldout.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ProbeResult:
  """A fitted probe, its basis and how well it decodes.

  Attributes:
    basis: orthonormalised probe directions at the site (C - 1 for a C-class probe; K for ridge on
      K real targets).
    weights: (D, C) or (D, K) in raw activation coordinates; bias: (C,) or (K,).
    train_accuracy, heldout_accuracy: class targets only (arg-max of the scores); NaN otherwise.
    chance: held-out accuracy of always predicting the training majority class (class targets).
    train_r2, heldout_r2: ridge only: the coefficient of determination, averaged over targets
      (for class targets, of the one-hot scores); NaN for logistic probes.
    num_train, num_heldout: rows on each side of the split.
  """

  basis: Basis
  weights: np.ndarray
  bias: np.ndarray
  train_accuracy: float
  heldout_accuracy: float
  chance: float
  train_r2: float
  heldout_r2: float
  num_train: int
  num_heldout: int


@jax.jit
def _scores(acts_NxD, weights_DxC, bias_C):
  return jnp.matmul(acts_NxD.astype(jnp.float32), weights_DxC, precision=_HIGHEST) + bias_C[None, :]


_fit_logistic = jax.jit(fit_logistic, static_argnames=("num_classes", "l2", "steps"))
_fit_ridge = jax.jit(fit_ridge, static_argnames=("l2",))


def _prepare(acts_NxD, *, site, what, num_rows, heldout_fraction, seed, groups, heldout):
  _check_rows(acts_NxD, site=site, what=what, num_rows=num_rows)
  if heldout is not None:
    heldout = np.asarray(heldout, bool).reshape(-1)
    if heldout.shape != (num_rows,):
      raise BadInputError(f"{what} at site {site!r}: held-out mask of shape {heldout.shape} for "
                          f"{num_rows} rows")
    train_mask, heldout_mask = (~heldout).astype(np.float32), heldout.astype(np.float32)
  else:
    train_mask, heldout_mask = _split_masks(num_rows, heldout_fraction, seed, groups)
  if not train_mask.any():
    raise BadInputError(f"{what} at site {site!r}: no training rows among {num_rows}")
  return jnp.asarray(acts_NxD, jnp.float32), train_mask, heldout_mask


def _accuracy(predictions: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> float:
  return float(np.sum((predictions == labels) * mask) / mask.sum()) if mask.any() else float("nan")


def _r2(predictions_NxK: np.ndarray, targets_NxK: np.ndarray, mask: np.ndarray) -> float:
  if not mask.any():
    return float("nan")
  rows = mask > 0
  residual = np.sum(np.square(targets_NxK[rows] - predictions_NxK[rows]), axis=0)
  total = np.sum(np.square(targets_NxK[rows] - targets_NxK[rows].mean(axis=0)), axis=0)
  return float(np.mean(1.0 - residual / np.maximum(total, 1e-30)))


def logistic_probe(acts_NxD: np.ndarray | jax.Array, labels_N: np.ndarray | jax.Array, *, site: str,
                   num_classes: int | None = None, l2: float = 1e-2, steps: int = 300,
                   heldout_fraction: float = 0.25, seed: int = 0,
                   groups: np.ndarray | None = None, heldout: np.ndarray | None = None,
                   field: str = "concept", label_names: Sequence[str] | None = None,
                   source: str = "") -> ProbeResult:
  """Fits a multinomial logistic probe for integer classes and returns its basis and accuracies.

  Args:
    acts_NxD: activation rows at ``site``.
    labels_N: integer classes in [0, num_classes).
    num_classes: C; inferred as max label + 1 when None.
    l2: the L2 penalty on the standardised weights (the bias is not penalised).
    steps: accelerated-gradient steps (fixed: the fit is deterministic).
    heldout_fraction, seed, groups: the split, unless ``heldout`` (a boolean mask) is given; rows
      sharing a group (e.g. ``captures.fields["example"]``) fall on the same side.
    field, label_names: name the directions ``"{field}={name}"``.

  Raises:
    ValueError: bad shapes, non-finite activations, bad labels or no training rows.
    BasisError: the probe's class directions are rank-deficient.
  """
  labels, num_classes = _class_labels(labels_N, num_classes, site=site, what="logistic_probe")
  acts, train_mask, heldout_mask = _prepare(
      acts_NxD, site=site, what="logistic_probe", num_rows=labels.shape[0],
      heldout_fraction=heldout_fraction, seed=seed, groups=groups, heldout=heldout)
  weights_DxC, bias_C = _fit_logistic(acts, jnp.asarray(labels), jnp.asarray(train_mask),
                                      num_classes=num_classes, l2=float(l2), steps=int(steps))
  predictions = np.argmax(np.asarray(_scores(acts, weights_DxC, bias_C)), axis=1)
  basis = make_basis(np.asarray(class_weight_rows(weights_DxC)), site=site, method="logistic_probe",
                     source=source, labels=class_directions(label_names, num_classes, field))
  return ProbeResult(basis=basis, weights=np.asarray(weights_DxC), bias=np.asarray(bias_C),
                     train_accuracy=_accuracy(predictions, labels, train_mask),
                     heldout_accuracy=_accuracy(predictions, labels, heldout_mask),
                     chance=_majority_rate(labels, train_mask, heldout_mask),
                     train_r2=float("nan"), heldout_r2=float("nan"),
                     num_train=int(train_mask.sum()), num_heldout=int(heldout_mask.sum()))


def ridge_probe(acts_NxD: np.ndarray | jax.Array, targets: np.ndarray | jax.Array, *, site: str,
                classes: bool | None = None, num_classes: int | None = None, l2: float = 1e-3,
                heldout_fraction: float = 0.25, seed: int = 0, groups: np.ndarray | None = None,
                heldout: np.ndarray | None = None, field: str = "concept",
                label_names: Sequence[str] | None = None, source: str = "") -> ProbeResult:
  """Fits a ridge probe in closed form and returns its basis and fit metrics.

  Targets are integer classes (N,) when ``classes`` (default: when their dtype is integer), which
  are regressed as one-hot vectors: accuracy is that of the arg-max score (for two classes, the sign
  of the difference) and the basis is the C - 1 centred class directions, as for `logistic_probe`.
  Otherwise targets are real, (N,) or (N, K): the basis is the K weight vectors (labels
  ``"{field}"`` or ``"{field}/{k}"``) and R^2 measures the fit.
  """
  targets = np.asarray(targets)
  classes = np.issubdtype(targets.dtype, np.integer) if classes is None else classes
  if classes:
    labels, num_classes = _class_labels(targets, num_classes, site=site, what="ridge_probe")
    targets_NxK = np.eye(num_classes, dtype=np.float32)[labels]
    names = class_directions(label_names, num_classes, field)
  else:
    targets_NxK = targets.astype(np.float32).reshape(targets.shape[0], -1)
    if not np.all(np.isfinite(targets_NxK)):
      raise BadInputError(f"ridge_probe at site {site!r}: non-finite targets")
    names = ((field,) if targets.ndim == 1
             else tuple(f"{field}/{k}" for k in range(targets_NxK.shape[1])))
    labels = None
  acts, train_mask, heldout_mask = _prepare(
      acts_NxD, site=site, what="ridge_probe", num_rows=targets_NxK.shape[0],
      heldout_fraction=heldout_fraction, seed=seed, groups=groups, heldout=heldout)
  weights_DxK, bias_K = _fit_ridge(acts, jnp.asarray(targets_NxK), jnp.asarray(train_mask),
                                   l2=float(l2))
  predictions_NxK = np.asarray(_scores(acts, weights_DxK, bias_K))
  rows = class_weight_rows(weights_DxK) if classes else weights_DxK.T
  basis = make_basis(np.asarray(rows), site=site, method="ridge_probe", source=source, labels=names)
  if classes:
    predictions = np.argmax(predictions_NxK, axis=1)
    accuracies = (_accuracy(predictions, labels, train_mask),
                  _accuracy(predictions, labels, heldout_mask),
                  _majority_rate(labels, train_mask, heldout_mask))
  else:
    accuracies = (float("nan"),) * 3
  return ProbeResult(basis=basis, weights=np.asarray(weights_DxK), bias=np.asarray(bias_K),
                     train_accuracy=accuracies[0], heldout_accuracy=accuracies[1],
                     chance=accuracies[2],
                     train_r2=_r2(predictions_NxK, targets_NxK, train_mask),
                     heldout_r2=_r2(predictions_NxK, targets_NxK, heldout_mask),
                     num_train=int(train_mask.sum()), num_heldout=int(heldout_mask.sum()))
