"""Training losses, one per architecture, each ``(sae, acts, **hyper) -> (loss, LossAux)``.

Every loss is the squared reconstruction error ``mean_n ||x_n - x_hat_n||^2`` (summed over D,
averaged over the examples: SAELens's ``mse_loss``, dictionary_learning's ``l2_loss``) plus the
architecture's sparsity or auxiliary term. Activations may have any leading axes; every position is
an example. Hyper-parameters that are plain numbers (coefficients, a per-call k) may be traced, so
SAEs stacked with `stack_saes` can be vmapped with different values; ``k_aux`` fixes a shape and
is static.

Use with ``jax.value_and_grad(loss, has_aux=True)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from landscape.sae._architectures import SAE
from landscape.sae._architectures import BatchTopKSAE
from landscape.sae._architectures import JumpReLUSAE
from landscape.sae._architectures import StandardSAE
from landscape.sae._architectures import TopKSAE
from landscape.sae._architectures import along_last
from landscape.sae._architectures import heaviside_step
from landscape.sae._architectures import jumprelu
from landscape.sae._architectures import scatter_last
from landscape.sae._topk import top_k
from landscape.sites import BadInputError


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SAEMetrics:
  """Scalars of one loss evaluation (float32).

  Attributes:
    loss: the total minimised.
    squared_error: ``mean_n ||x_n - x_hat_n||^2``, the reconstruction term.
    sparsity_loss: the weighted sparsity term: L1 (standard), L0 (JumpReLU); 0 for TopK and
      BatchTopK.
    auxk_loss: the weighted AuxK term (TopK, BatchTopK with dead latents); 0 otherwise.
    l0: the mean number of nonzero codes per example.
  """

  loss: jax.Array
  squared_error: jax.Array
  sparsity_loss: jax.Array
  auxk_loss: jax.Array
  l0: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossAux:
  """What a loss returns beside the loss.

  Attributes:
    metrics: the scalars to log.
    fired: (F,) bool, the latents nonzero on at least one example of the batch (for
      `update_firing`).
    smallest_code: the smallest positive code of the batch, 0 when there is none (for
      `update_batchtopk_threshold`).
  """

  metrics: SAEMetrics
  fired: jax.Array
  smallest_code: jax.Array


def _examples(acts: jax.Array, sae: SAE) -> jax.Array:
  acts = jnp.asarray(acts)
  if acts.ndim < 1 or acts.shape[-1] != sae.d_in:
    raise BadInputError(f"{type(sae).__name__} loss: activations of shape {acts.shape} for an SAE "
                        f"with d_in={sae.d_in} (W_enc {tuple(sae.W_enc.shape)})")
  return acts.reshape(-1, acts.shape[-1])


def _squared_error(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  return jnp.mean(jnp.sum(jnp.square((x - x_hat).astype(jnp.float32)), axis=-1))


def _aux(codes: jax.Array, squared_error, sparsity, auxk) -> tuple[jax.Array, LossAux]:
  zero = jnp.zeros((), jnp.float32)
  sparsity = zero if sparsity is None else jnp.asarray(sparsity, jnp.float32)
  auxk = zero if auxk is None else jnp.asarray(auxk, jnp.float32)
  loss = squared_error + sparsity + auxk
  active = codes > 0
  l0 = jnp.mean(jnp.sum(active, axis=-1).astype(jnp.float32))
  smallest = jnp.min(jnp.where(active, codes, jnp.inf).astype(jnp.float32))
  metrics = SAEMetrics(loss=loss, squared_error=squared_error, sparsity_loss=sparsity,
                       auxk_loss=auxk, l0=l0)
  return loss, LossAux(metrics=metrics, fired=jnp.any(active, axis=0),
                       smallest_code=jnp.where(jnp.isfinite(smallest), smallest, 0.0))


def auxk_loss(sae: SAE, post_relu_NxF: jax.Array, residual_NxD: jax.Array, dead_F: jax.Array, *,
              k_aux: int) -> jax.Array:
  """The AuxK loss (Gao et al. 2024, Appendix A.2; as dictionary_learning and OpenAI compute it).

  The top ``k_aux`` dead latents of each example (fewer when fewer are dead), by their ReLU codes,
  reconstruct the main reconstruction's residual through the decoder without its bias; their
  squared error is divided by the residual's centred squared norm ``mean_n ||r_n - mean(r)||^2``.
  The residual is held constant (no gradient through it). 0 when no latent is dead.

  Args:
    sae: gives ``W_dec`` (F, D).
    post_relu_NxF: ReLU of the pre-activations of every latent.
    residual_NxD: x - x_hat of the main reconstruction.
    dead_F: bool, the dead latents (`dead_latents`).
    k_aux: static, <= F; Gao et al. use D / 2.
  """
  width = post_relu_NxF.shape[-1]
  if not 1 <= k_aux <= width:
    raise BadInputError(f"auxk_loss: k_aux={k_aux} must be in [1, d_sae={width}]")
  dead_F = jnp.asarray(dead_F, bool)
  masked = jnp.where(along_last(dead_F, post_relu_NxF), post_relu_NxF, -jnp.inf)
  values, indices = top_k(masked, k_aux)
  values = jnp.where(jnp.isfinite(values), values, jnp.zeros((), values.dtype))
  reconstruction = scatter_last(values, indices, width) @ sae.W_dec
  residual = jax.lax.stop_gradient(residual_NxD).astype(jnp.float32)
  error = jnp.mean(jnp.sum(jnp.square(residual - reconstruction.astype(jnp.float32)), axis=-1))
  centred = residual - jnp.mean(residual, axis=0, keepdims=True)
  scale = jnp.mean(jnp.sum(jnp.square(centred), axis=-1))
  usable = jnp.any(dead_F) & (scale > 0)
  return jnp.where(usable, error / jnp.where(scale > 0, scale, 1.0), 0.0)


def _auxk_term(sae, post, residual, dead, k_aux, coefficient):
  if dead is None:
    return None
  k_aux = max(1, min(sae.d_sae, sae.d_in // 2 if k_aux is None else int(k_aux)))
  return coefficient * auxk_loss(sae, post, residual, dead, k_aux=k_aux)


def _top_k_loss(sae, acts, activate, k, dead, k_aux, auxk_coefficient):
  """Squared error and AuxK of a top-k SAE whose codes are ``activate(pre, k)``."""
  x = _examples(acts, sae)
  pre = sae.pre_activations(x)
  codes = activate(pre, k)
  x_hat = sae.decode(codes)
  squared_error = _squared_error(x, x_hat)
  auxk = _auxk_term(sae, jax.nn.relu(pre), x - x_hat, dead, k_aux, auxk_coefficient)
  return _aux(codes, squared_error, None, auxk)


def topk_loss(sae: TopKSAE, acts: jax.Array, *, k: jax.Array | int | None = None,
              dead: jax.Array | None = None, k_aux: int | None = None,
              auxk_coefficient: float | jax.Array = 1 / 32) -> tuple[jax.Array, LossAux]:
  """TopK: squared error + ``auxk_coefficient`` x AuxK over the ``dead`` latents (when given).

  Args:
    sae: a `TopKSAE`.
    acts: (..., D).
    k: latents per example, traced, <= sae.k (k annealing, stacked SAEs of different k); sae.k
      when None.
    dead: (F,) bool dead latents for AuxK; None for no AuxK.
    k_aux: static; D // 2 when None (Gao et al.'s heuristic), capped at F.
    auxk_coefficient: 1/32 in Gao et al. and dictionary_learning.
  """
  return _top_k_loss(sae, acts, sae.activate, k, dead, k_aux, auxk_coefficient)


def batchtopk_loss(sae: BatchTopKSAE, acts: jax.Array, *, k: jax.Array | int | None = None,
                   dead: jax.Array | None = None, k_aux: int | None = None,
                   auxk_coefficient: float | jax.Array = 1 / 32) -> tuple[jax.Array, LossAux]:
  """BatchTopK: as `topk_loss`, with the codes of `BatchTopKSAE.encode_batch` (the k x N largest
  of the batch). Feed ``aux.smallest_code`` to `update_batchtopk_threshold` after the step."""
  return _top_k_loss(sae, acts, sae.activate_batch, k, dead, k_aux, auxk_coefficient)


def jumprelu_loss(sae: JumpReLUSAE, acts: jax.Array, *, l0_coefficient: float | jax.Array
                  ) -> tuple[jax.Array, LossAux]:
  """JumpReLU: squared error + ``l0_coefficient`` x mean_n sum_i H(pre_ni - threshold_i).

  The L0 penalty of Rajamanoharan et al. 2024 and SAELens's "step" mode; its gradient reaches
  only the threshold, through `heaviside_step`'s rectangle-kernel pseudo-derivative.
  """
  x = _examples(acts, sae)
  pre = sae.pre_activations(x)
  codes = jumprelu(pre, sae.threshold, sae.bandwidth)
  x_hat = sae.decode(codes)
  l0_penalty = jnp.mean(jnp.sum(heaviside_step(pre, sae.threshold, sae.bandwidth), axis=-1))
  sparsity = l0_coefficient * l0_penalty.astype(jnp.float32)
  return _aux(codes, _squared_error(x, x_hat), sparsity, None)


def standard_loss(sae: StandardSAE, acts: jax.Array, *, l1_coefficient: float | jax.Array
                  ) -> tuple[jax.Array, LossAux]:
  """ReLU: squared error + ``l1_coefficient`` x mean_n sum_i codes_ni ||W_dec_i||.

  The L1 penalty weighted by each decoder row's norm (Anthropic's April 2024 update; SAELens's
  "standard" with lp_norm 1), so shrinking a code by growing its decoder row does not evade it;
  with unit-norm decoder rows (`unit_norm_decoder`) it is the plain L1 of Bricken et al. 2023.
  """
  x = _examples(acts, sae)
  codes = sae.encode(x)
  x_hat = sae.decode(codes)
  norms = jnp.linalg.norm(sae.W_dec.astype(jnp.float32), axis=-1)
  l1 = jnp.mean(jnp.sum(codes.astype(jnp.float32) * norms[None, :], axis=-1))
  return _aux(codes, _squared_error(x, x_hat), l1_coefficient * l1, None)


LOSSES: dict[type[SAE], Callable[..., tuple[jax.Array, LossAux]]] = {
    TopKSAE: topk_loss, BatchTopKSAE: batchtopk_loss, JumpReLUSAE: jumprelu_loss,
    StandardSAE: standard_loss}


def loss_for(sae: Any) -> Callable[..., tuple[jax.Array, LossAux]]:
  """The loss function of ``sae``'s architecture."""
  try:
    return LOSSES[type(sae)]
  except KeyError:
    raise BadInputError(f"loss_for: no loss for {type(sae).__name__}; known: "
                        f"{sorted(cls.__name__ for cls in LOSSES)}") from None
