"""Explanation penalties: "right for the right reasons" on the inputs, and along directions at a site.

Ross, Hughes and Doshi-Velez (IJCAI 2017, arXiv 1703.03717) penalise the input gradient of the
summed log-probabilities on the inputs an annotator marked irrelevant:

    lambda * sum_n sum_d (A_nd * d/dx_nd sum_k log p(k | x_n))^2

with A_nd = 1 on irrelevant inputs. The paper's full-data demos sum this and the cross-entropy over
the batch (lambda = 1000 on decoy MNIST, inputs in 0-255); here both are averaged over the batch
(`cross_entropy` and `explanation_penalty`), which divides both by N and leaves their ratio, hence
lambda, unchanged. Its Toy Colors sample-efficiency script (bin/check_color_data_requirements.py,
``normalize=True``) instead divides the penalty by the number of annotated entries in the batch,
sum_n sum_d A_nd, with lambda = 10,000: ``normalize="annotated"`` here.

The site version differentiates the same summed log-probabilities with respect to a site's
activation, through an intervention that adds a zero perturbation (``act + delta``, delta = 0) and
a gradient in delta, and penalises the squared coordinates of that gradient along a basis: it asks
the output not to be sensitive to the activation along those directions.

Both are second order: the training gradient differentiates through an input gradient. They assume
the model treats examples independently (no batch statistics), so the gradient of the batch sum is
each example's own gradient.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape.directions import Basis
from landscape.objectives._composition import Term
from landscape.objectives._composition import TermInputs
from landscape.objectives._composition import Weight
from landscape.objectives._fields import batch_field
from landscape.objectives._fields import check_width
from landscape.objectives._fields import checked_rows
from landscape.objectives._fields import coordinates
from landscape.objectives._fields import refreshed_rows
from landscape.sites import BadInputError


def summed_log_probabilities(logits: jax.Array) -> jax.Array:
  """``sum over examples, positions and classes of log softmax(logits)``, a float32 scalar."""
  return jnp.sum(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))


def input_gradients(forward, params: Any, inputs: jax.Array) -> jax.Array:
  """d(sum_k log p(k | x_n))/dx_n for every example n, shaped like ``inputs``.

  ``forward(params, inputs) -> (logits, acts)`` as `TermInputs.forward`. Differentiable again (the
  training gradient of a penalty on it is second order).
  """
  if not jnp.issubdtype(inputs.dtype, jnp.floating):
    raise BadInputError(f"input gradients need floating inputs, got dtype {inputs.dtype} (shape "
                        f"{inputs.shape}); for tokens, use site_explanation_penalty at the embedding")
  return jax.grad(lambda x: summed_log_probabilities(forward(params, x)[0]))(inputs)


def site_gradients(forward, params: Any, inputs: Any, site: str, act_shape: tuple[int, ...]
                   ) -> jax.Array:
  """d(sum_k log p(k | x_n))/d act_n at ``site``, float32 shaped ``act_shape``.

  Taken as the gradient in a zero perturbation ``delta`` that an intervention adds to the site's
  activation (after any training intervention there), so the model needs no hook of its own.
  """

  def summed(delta):
    logits, _ = forward(params, inputs, interventions={site: lambda act: act + delta.astype(act.dtype)})
    return summed_log_probabilities(logits)

  return jax.grad(summed)(jnp.zeros(act_shape, jnp.float32))


def _per_example_sum(values: jax.Array) -> jax.Array:
  return jnp.sum(values.reshape(values.shape[0], -1), axis=1)


NORMALIZATIONS = ("examples", "annotated")


def explanation_penalty(*, weight: Weight = 1.0, mask_key: str = "mask", inputs_key: str = "inputs",
                        normalize: str = "examples", name: str = "explanation") -> Term:
  """Ross et al. (2017)'s "right reasons" term, exactly, averaged over the batch.

  Value (``normalize="examples"``): ``mean_n sum_d (A_nd * g_nd)^2`` with ``g_n = d(sum_k log p(k | x_n))/dx_n`` (log p the
  log-softmax of the logits, summed over classes, and over positions for sequence outputs) and
  ``A = batch[mask_key]`` shaped like the inputs, 1 on the inputs annotated irrelevant. ``weight``
  is the paper's lambda. ``normalize="annotated"``: ``sum_n sum_d (A_nd * g_nd)^2 / max(1, sum_n
  sum_d A_nd)``, the sum divided by the number of annotated entries in the batch (with a 0/1 mask),
  as the paper's sample-efficiency script. Metric ``masked_gradient_norm``: the mean over examples
  of the masked gradient's norm.

  The gradient is taken through ``inputs.forward`` (the training interventions applied) at
  ``batch[inputs_key]``, which must be floating point.
  """

  if normalize not in NORMALIZATIONS:
    raise BadInputError(f"loss term {name!r}: normalize={normalize!r}; expected one of "
                        f"{NORMALIZATIONS}")

  def fn(inputs: TermInputs):
    x = batch_field(inputs.batch, inputs_key, term=name)
    mask = batch_field(inputs.batch, mask_key, term=name)
    if mask.shape != x.shape:
      raise BadInputError(f"loss term {name!r}: mask batch[{mask_key!r}] has shape {mask.shape}, the "
                          f"inputs batch[{inputs_key!r}] {x.shape}; they must match")
    gradients = input_gradients(inputs.forward, inputs.params, x).astype(jnp.float32)
    mask = mask.astype(jnp.float32)
    squared = _per_example_sum(jnp.square(mask * gradients))
    metrics = {"masked_gradient_norm": jnp.mean(jnp.sqrt(squared))}
    if normalize == "annotated":
      return jnp.sum(squared) / jnp.maximum(1.0, jnp.sum(mask)), metrics
    return jnp.mean(squared), metrics

  return Term(name=name, fn=fn, weight=weight)


def site_explanation_penalty(site: str, basis: Basis | jax.Array | np.ndarray | None = None, *,
                             basis_key: str | None = None, mask_key: str | None = None,
                             weight: Weight = 1.0, name: str = "site_explanation") -> Term:
  """The explanation penalty at a site: the output's sensitivity there, along directions or masked.

  Value: ``mean_n sum_{t,k} (A_nt g_ntk)^2``, where ``g_n = d(sum_k log p(k | x_n))/d act_n`` at
  ``site`` (after the training interventions there), projected on the rows of a basis Q (K, D) as
  g @ Q^T, or whole when no basis is given; t runs over positions for (B, T, D) sites, and A is
  ``batch[mask_key]`` (B,) or (B, T), 1 where the sensitivity is forbidden (all ones without it).
  With tokens, the site ``embed`` and a mask on the shortcut's positions, this is Ross et al.'s
  penalty on the inputs that cannot be differentiated themselves. Metric ``gradient_norm``: the
  mean over examples of the penalised gradient's norm.

  Args:
    site: where the gradient is taken (declared: its activation's shape comes from the capture).
    basis: a `Basis` or (K, D) array with orthonormal rows; or ``basis_key`` to read them each step
      from ``inputs.run.refreshed`` (a refitted basis); or neither, for the whole space of the site.
    mask_key: the batch field of the forbidden examples or positions.
  """
  if basis is not None and basis_key is not None:
    raise BadInputError(f"loss term {name!r}: give at most one of basis= and basis_key=")
  fixed_rows = None if basis is None else checked_rows(basis, site=site, term=name)

  def fn(inputs: TermInputs):
    act = inputs.acts[site]
    gradients = site_gradients(inputs.forward, inputs.params, inputs.batch["inputs"], site,
                               act.shape)
    if fixed_rows is not None or basis_key is not None:
      rows_KxD = fixed_rows if fixed_rows is not None else refreshed_rows(
          inputs.run, basis_key, site=site, term=name)
      check_width(act, rows_KxD, site=site, term=name)
      gradients = coordinates(gradients, rows_KxD)
    if mask_key is not None:
      mask = batch_field(inputs.batch, mask_key, term=name).astype(jnp.float32)
      if mask.shape != gradients.shape[:mask.ndim]:
        raise BadInputError(f"loss term {name!r}: mask batch[{mask_key!r}] of shape {mask.shape} does "
                            f"not match the leading axes of site {site!r} (shape {act.shape})")
      gradients = gradients * jnp.reshape(mask, mask.shape + (1,) * (gradients.ndim - mask.ndim))
    squared = _per_example_sum(jnp.square(gradients))
    return jnp.mean(squared), {"gradient_norm": jnp.mean(jnp.sqrt(squared))}

  return Term(name=name, fn=fn, weight=weight, sites=(site,))
