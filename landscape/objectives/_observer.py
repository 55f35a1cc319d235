"""Alignment to an observer (brain-augmented learning): predict its responses, or match their geometry.

The batch carries the observer's response to every example, ``batch[responses_key]`` (B, R)
(neural recordings, say). Two families of terms:

* `observer_readout`: a linear readout from a site predicts the responses, with a ridge-style MSE
  (Safarani et al. 2021 co-train such a readout; Federer et al. 2020).
* `rsa_alignment` and `cka_alignment`: the model's representational geometry over the batch should
  match the responses' (Li et al. 2019 match similarity matrices of mouse V1 responses).

Site activations (B, ..., D) are flattened per example to (B, F). The similarity losses and the
closed-form readout are statistics of the whole batch: under ``parallelism="pmap"`` each device sees
part of the batch and computes them on its part (the sharded ``jit`` step computes them on the whole
batch, as on one device).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from landscape.objectives._composition import Term
from landscape.objectives._composition import TermInputs
from landscape.objectives._composition import Weight
from landscape.objectives._fields import batch_field
from landscape.objectives._fields import per_example_rows
from landscape.sites import BadInputError

HIGHEST = jax.lax.Precision.HIGHEST
READOUT_FITS = ("trainable", "ridge")
_EPSILON = 1e-8


def _centred(rows_BxF: jax.Array) -> jax.Array:
  return rows_BxF - jnp.mean(rows_BxF, axis=0, keepdims=True)


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.matmul(a, b, precision=HIGHEST)


def _upper_triangle(matrix_BxB: jax.Array) -> jax.Array:
  rows, cols = np.triu_indices(matrix_BxB.shape[0], k=1)
  return matrix_BxB[rows, cols]


def _pearson(u: jax.Array, v: jax.Array) -> jax.Array:
  u, v = u - jnp.mean(u), v - jnp.mean(v)
  return jnp.sum(u * v) / jnp.sqrt(jnp.sum(u * u) * jnp.sum(v * v) + _EPSILON)


def correlation_dissimilarity(rows_BxF: jax.Array) -> jax.Array:
  """The representational dissimilarity matrix (B, B): 1 - Pearson correlation between examples.

  Each example's features are centred and scaled to unit norm (with a 1e-8 floor on the squared
  norm, so a constant example has correlation 0 with every other rather than NaN).
  """
  centred = rows_BxF - jnp.mean(rows_BxF, axis=1, keepdims=True)
  unit = centred / jnp.sqrt(jnp.sum(jnp.square(centred), axis=1, keepdims=True) + _EPSILON)
  return 1.0 - _matmul(unit, unit.T)


def rsa_distance(model_BxF: jax.Array, target_BxR: jax.Array) -> jax.Array:
  """1 - Pearson correlation between the upper triangles (i < j) of the two RDMs; in [0, 2].

  The RDMs use correlation distance (`correlation_dissimilarity`). Needs B >= 3.
  """
  if model_BxF.shape[0] < 3:
    raise BadInputError(f"rsa_distance: needs at least 3 examples, got {model_BxF.shape[0]}")
  model_rdm = correlation_dissimilarity(model_BxF.astype(jnp.float32))
  target_rdm = correlation_dissimilarity(target_BxR.astype(jnp.float32))
  return 1.0 - _pearson(_upper_triangle(model_rdm), _upper_triangle(target_rdm))


def linear_cka(model_BxF: jax.Array, target_BxR: jax.Array) -> jax.Array:
  """Linear CKA (Kornblith et al. 2019) in [0, 1]: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).

  K = Xc Xc^T and L = Yc Yc^T are the centred Gram matrices (H X X^T H with H = I - 11^T / B) and
  HSIC(K, L) = sum_ij K_ij L_ij (the 1 / (B - 1)^2 factors cancel).
  """
  gram_x = _matmul(_centred(model_BxF.astype(jnp.float32)), _centred(model_BxF.astype(jnp.float32)).T)
  gram_y = _matmul(_centred(target_BxR.astype(jnp.float32)), _centred(target_BxR.astype(jnp.float32)).T)
  cross = jnp.sum(gram_x * gram_y)
  return cross / jnp.sqrt(jnp.sum(gram_x * gram_x) * jnp.sum(gram_y * gram_y) + _EPSILON)


def ridge_fit(rows_BxF: jax.Array, targets_BxR: jax.Array, ridge: float) -> tuple[jax.Array, jax.Array]:
  """(kernel (F, R), bias (R,)) minimising ``readout_loss``, in closed form.

  kernel = (Xc^T Xc + B ridge I)^-1 Xc^T Yc, solved in the dual (B x B) when F > B; bias =
  mean(Y) - mean(X) kernel. Needs ridge > 0 when the centred rows do not span F dimensions.
  """
  x = rows_BxF.astype(jnp.float32)
  y = targets_BxR.astype(jnp.float32)
  num_examples, num_features = x.shape
  x_c, y_c = _centred(x), _centred(y)
  shift = num_examples * ridge
  if num_features <= num_examples:
    kernel = jnp.linalg.solve(_matmul(x_c.T, x_c) + shift * jnp.eye(num_features), _matmul(x_c.T, y_c))
  else:
    kernel = _matmul(x_c.T, jnp.linalg.solve(_matmul(x_c, x_c.T) + shift * jnp.eye(num_examples), y_c))
  bias = jnp.mean(y, axis=0) - _matmul(jnp.mean(x, axis=0, keepdims=True), kernel)[0]
  return kernel, bias


def readout_loss(rows_BxF: jax.Array, targets_BxR: jax.Array, kernel_FxR: jax.Array, bias_R: jax.Array,
                 ridge: float) -> tuple[jax.Array, jax.Array]:
  """(mean over examples and responses of the squared error + ridge * ||kernel||^2 / R, that MSE)."""
  predictions = _matmul(rows_BxF.astype(jnp.float32), kernel_FxR) + bias_R[None, :]
  mse = jnp.mean(jnp.square(predictions - targets_BxR.astype(jnp.float32)))
  return mse + ridge * jnp.sum(jnp.square(kernel_FxR)) / targets_BxR.shape[1], mse


def observer_readout(site: str, *, width: int | None = None, num_responses: int | None = None,
                     fit: str = "trainable", ridge: float = 1e-3, weight: Weight = 1.0,
                     optimizer: optax.GradientTransformation | None = None,
                     responses_key: str = "responses", name: str = "readout") -> Term:
  """A linear readout from ``site`` predicts ``batch[responses_key]`` (B, R).

  Value: ``mean_{n,r} (x_n W + b - y_n)_r^2 + ridge * ||W||^2 / R`` with x_n the example's flattened
  activation (F = width). Metrics: ``mse`` and ``r2`` (1 - squared error / the responses' variance
  about their batch mean, pooled over responses).

  Args:
    fit: "trainable" (default): W and b are the term's state, initialised at zero and trained by
      ``optimizer`` (default ``optax.adam(1e-2)``) on the value, unweighted, while the model gets the
      weighted gradient. One readout serves every batch, so the model is pushed towards features
      from which a fixed linear map predicts the observer, as in co-training with a neural readout.
      "ridge": W and b are refitted in closed form on each batch (`ridge_fit`; no state). That fit
      is in-sample: when F approaches B it fits the batch whatever the features, and the loss says
      little, which is why it is not the default. Its W and b are held fixed in the gradient: they
      minimise the value exactly, so by the envelope theorem this is the exact gradient of the
      minimum, without differentiating through the solve.
    width, num_responses: F and R, needed by "trainable" to build the state.
    ridge: the penalty on W, relative to the mean squared error (> 0 for "ridge", whose normal
      equations are singular when F > B - 1).
  """
  if fit not in READOUT_FITS:
    raise BadInputError(f"loss term {name!r}: fit={fit!r}; expected one of {READOUT_FITS}")
  if fit == "trainable" and (width is None or num_responses is None):
    raise BadInputError(f"loss term {name!r}: fit='trainable' needs width= and num_responses= "
                        f"(got {width}, {num_responses})")
  if fit == "ridge" and ridge <= 0:
    raise BadInputError(f"loss term {name!r}: fit='ridge' needs ridge > 0, got {ridge}")

  def fn(inputs: TermInputs):
    rows = per_example_rows(inputs.acts[site])
    targets = batch_field(inputs.batch, responses_key, term=name).astype(jnp.float32)
    if targets.ndim != 2 or targets.shape[0] != rows.shape[0]:
      raise BadInputError(f"loss term {name!r}: responses of shape {targets.shape}; expected "
                          f"({rows.shape[0]}, R)")
    if fit == "trainable":
      if rows.shape[1] != width or targets.shape[1] != num_responses:
        raise BadInputError(f"loss term {name!r}: the readout is ({width}, {num_responses}) but site "
                            f"{site!r} gives {rows.shape[1]} features and the responses {targets.shape}")
      kernel, bias = inputs.state["kernel"], inputs.state["bias"]
    else:
      kernel, bias = jax.lax.stop_gradient(ridge_fit(rows, targets, ridge))
    value, mse = readout_loss(rows, targets, kernel, bias, ridge)
    variance = jnp.mean(jnp.square(_centred(targets)))
    return value, {"mse": mse, "r2": 1.0 - mse / jnp.maximum(variance, 1e-12)}

  if fit == "ridge":
    return Term(name=name, fn=fn, weight=weight, sites=(site,))

  def init(key: jax.Array, params: Any) -> dict[str, jax.Array]:
    del key, params
    return {"kernel": jnp.zeros((width, num_responses), jnp.float32),
            "bias": jnp.zeros((num_responses,), jnp.float32)}

  return Term(name=name, fn=fn, weight=weight, sites=(site,), init=init,
              optimizer=optimizer if optimizer is not None else optax.adam(1e-2))


def _similarity_term(site: str, distance, *, weight: Weight, responses_key: str, name: str,
                     metric: str) -> Term:
  def fn(inputs: TermInputs):
    rows = per_example_rows(inputs.acts[site])
    targets = batch_field(inputs.batch, responses_key, term=name)
    if targets.shape[0] != rows.shape[0]:
      raise BadInputError(f"loss term {name!r}: responses of shape {targets.shape} for a batch of "
                          f"{rows.shape[0]}")
    value = distance(rows, per_example_rows(targets))
    return value, {metric: 1.0 - value}

  return Term(name=name, fn=fn, weight=weight, sites=(site,))


def rsa_alignment(site: str, *, weight: Weight = 1.0, responses_key: str = "responses",
                  name: str = "rsa") -> Term:
  """Value: `rsa_distance` between the site's activations and the responses over the batch.

  1 - Pearson correlation of the RDMs' upper triangles, the RDMs in correlation distance. Metric
  ``correlation``: the RDMs' correlation. A batch statistic (see the module docstring on pmap).
  """
  return _similarity_term(site, rsa_distance, weight=weight, responses_key=responses_key, name=name,
                          metric="correlation")


def cka_alignment(site: str, *, weight: Weight = 1.0, responses_key: str = "responses",
                  name: str = "cka") -> Term:
  """Value: 1 - `linear_cka` of the site's activations and the responses over the batch.

  Metric ``cka``. A batch statistic (see the module docstring on pmap).
  """
  return _similarity_term(site, lambda x, y: 1.0 - linear_cka(x, y), weight=weight,
                          responses_key=responses_key, name=name, metric="cka")
