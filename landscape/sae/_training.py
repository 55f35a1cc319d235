"""Training recipes of the reference SAE trainers, as pure functions and optax transforms.

No loop here: a training loop composes these. Each is a switch of the recipe it comes from:

- unit-norm decoder rows (`unit_norm_decoder`): the gradient's component along each decoder row
  removed before the optimizer, the rows renormalised after it (OpenAI, dictionary_learning);
- ``b_dec`` from the data (`init_b_dec`): geometric median (Weiszfeld), mean, or zero;
- input normalisation to dictionary_learning's or SAELens's units (`normalization_scale`), folded
  into the weights when saving (`fold_normalization`);
- dead latents tracked by tokens since each last fired (`FiringState`), for AuxK and resampling;
- dead-latent resampling (`resample_dead_latents`, Bricken et al. 2023), with the optimizer's
  moments of the resampled rows reset (`reset_latent_moments`);
- k annealing (`k_annealing`) and BatchTopK's inference threshold (`update_batchtopk_threshold`).

The decoder-row functions and `reset_latent_moments` find SAEs anywhere in a pytree (an SAE, a
dict holding one, optax updates and states shaped like them) and work on stacked SAEs (leading axes)
as on one; the others take one SAE: vmap them over a stack, as the optimizer's update whenever it
has a global operation (``optax.clip_by_global_norm`` would otherwise mix the SAEs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from landscape.sae._architectures import SAE
from landscape.sae._architectures import BatchTopKSAE
from landscape.sae._architectures import JumpReLUSAE
from landscape.sites import BadInputError

B_DEC_METHODS = ("geometric_median", "mean", "zero")


def _is_sae(node: Any) -> bool:
  return isinstance(node, SAE)


def map_saes(fn: Callable[..., SAE], tree: Any, *others: Any) -> Any:
  """``tree`` with every SAE node ``s`` replaced by ``fn(s, *matching nodes of others)``."""
  return jax.tree_util.tree_map(lambda node, *rest: fn(node, *rest) if _is_sae(node) else node,
                                tree, *others, is_leaf=_is_sae)


def _unit_rows(rows: jax.Array) -> jax.Array:
  rows = rows.astype(jnp.float32)
  norms = jnp.linalg.norm(rows, axis=-1, keepdims=True)
  return rows / jnp.where(norms > 0, norms, 1.0)


def normalize_decoder_rows(tree: Any) -> Any:
  """Every SAE's decoder rows scaled to unit norm (a zero row stays zero)."""
  return map_saes(lambda sae: sae.replace(W_dec=_unit_rows(sae.W_dec).astype(sae.W_dec.dtype)),
                  tree)


def project_decoder_gradient(grads: Any, params: Any) -> Any:
  """``grads`` with each decoder row's gradient made orthogonal to that row of ``params``:
  ``g_i - (g_i . u_i) u_i`` with ``u_i = W_dec_i / ||W_dec_i||`` (computed in float32).

  Keeps a unit-norm row's norm unchanged to first order (OpenAI's
  ``unit_norm_decoder_grad_adjustment_``, dictionary_learning's
  ``remove_gradient_parallel_to_decoder_directions``).
  """

  def project(grad_sae: SAE, param_sae: SAE) -> SAE:
    unit = _unit_rows(param_sae.W_dec)
    gradient = grad_sae.W_dec.astype(jnp.float32)
    parallel = jnp.sum(gradient * unit, axis=-1, keepdims=True)
    return grad_sae.replace(W_dec=(gradient - parallel * unit).astype(grad_sae.W_dec.dtype))

  return map_saes(project, grads, params)


def _require_params(params: Any, what: str) -> None:
  if params is None:
    raise BadInputError(f"{what}: needs params (pass them to update(updates, state, params))")


def remove_parallel_decoder_gradient() -> optax.GradientTransformationExtraArgs:
  """First in a chain: removes each decoder row's gradient component along the row
  (`project_decoder_gradient`). The returned update's W_dec rows are orthogonal to params' rows."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _require_params(params, "remove_parallel_decoder_gradient")
    return project_decoder_gradient(updates, params), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def renormalize_decoder() -> optax.GradientTransformationExtraArgs:
  """Last in a chain: changes each decoder row's update so that ``params + update`` has unit-norm
  rows (the update becomes ``normalize(W_dec + u) - W_dec``; other leaves pass through)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _require_params(params, "renormalize_decoder")

    def renormalize(update_sae: SAE, param_sae: SAE) -> SAE:
      stepped = param_sae.W_dec.astype(jnp.float32) + update_sae.W_dec.astype(jnp.float32)
      update = _unit_rows(stepped) - param_sae.W_dec.astype(jnp.float32)
      return update_sae.replace(W_dec=update.astype(update_sae.W_dec.dtype))

    return map_saes(renormalize, updates, params), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def positive_threshold(*, fraction_of_bandwidth: float = 1e-3
                       ) -> optax.GradientTransformationExtraArgs:
  """Last in a chain: keeps every JumpReLU SAE's threshold positive. Where ``params + update``
  would fall below ``fraction_of_bandwidth x bandwidth`` (the SAE's kernel width, so the floor is
  in the units of its pre-activations), the update is changed to land on that floor; other leaves
  and other architectures pass through.

  The straight-through reconstruction gradient lowers a threshold wherever letting more codes
  through lowers the error, and nothing in a plain optimizer stops it at 0: below 0 the
  pseudo-derivative ``-(threshold / bandwidth) rect(.)`` changes sign and the SAE is no longer a
  JumpReLU. SAELens and Gemma Scope train ``log(threshold)`` instead; this keeps
  dictionary_learning's parametrisation (and the stored ``threshold``) and clamps, as projected
  gradient descent.
  """
  if not fraction_of_bandwidth > 0:
    raise BadInputError(f"positive_threshold: fraction_of_bandwidth={fraction_of_bandwidth!r} "
                        "must be > 0")

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _require_params(params, "positive_threshold")

    def clamp(update_sae: SAE, param_sae: SAE) -> SAE:
      if not isinstance(param_sae, JumpReLUSAE):
        return update_sae
      floor = fraction_of_bandwidth * param_sae.bandwidth
      threshold = param_sae.threshold.astype(jnp.float32)
      stepped = jnp.maximum(threshold + update_sae.threshold.astype(jnp.float32), floor)
      return update_sae.replace(
          threshold=(stepped - threshold).astype(update_sae.threshold.dtype))

    return map_saes(clamp, updates, params), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def unit_norm_decoder(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``inner`` (e.g. ``optax.chain(optax.clip_by_global_norm(1.0), optax.adam(lr))``) with the
  decoder kept at unit-norm rows: the parallel gradient removed before it, the rows renormalised
  after it. Start from unit-norm rows (`init_sae` with ``decoder_norm=1``)."""
  return optax.chain(remove_parallel_decoder_gradient(), inner, renormalize_decoder())


def geometric_median(points: jax.Array, *, max_iterations: int = 100, tolerance: float = 1e-5
                     ) -> jax.Array:
  """The point (D,) minimising the sum of Euclidean distances to ``points`` (..., D): Weiszfeld's
  iteration from the mean, as dictionary_learning runs it (weights 1 / distance, normalised;
  stops after ``max_iterations`` or when a step moves less than ``tolerance``). Float32."""
  points = jnp.asarray(points, jnp.float32).reshape(-1, jnp.shape(points)[-1])

  def step(carry):
    iteration, guess, _ = carry
    distances = jnp.linalg.norm(points - guess[None, :], axis=-1)
    weights = 1.0 / jnp.maximum(distances, 1e-12)
    weights = weights / jnp.sum(weights)
    return iteration + 1, weights @ points, guess

  def keep_going(carry):
    iteration, guess, previous = carry
    moved = jnp.linalg.norm(guess - previous)
    return (iteration < max_iterations) & ((iteration == 0) | (moved >= tolerance))

  mean = jnp.mean(points, axis=0)
  _, median, _ = jax.lax.while_loop(keep_going, step, (jnp.asarray(0), mean, mean))
  return median


def initial_b_dec(acts: jax.Array, method: str = "geometric_median") -> jax.Array:
  """A starting ``b_dec`` (D,) from activations (..., D): "geometric_median" (OpenAI,
  dictionary_learning's TopK), "mean", or "zero" (SAELens's default)."""
  if method not in B_DEC_METHODS:
    raise BadInputError(f"initial_b_dec: method={method!r}; expected one of {B_DEC_METHODS}")
  acts = jnp.asarray(acts)
  if method == "zero":
    return jnp.zeros(acts.shape[-1], jnp.float32)
  if method == "mean":
    return jnp.mean(acts.reshape(-1, acts.shape[-1]).astype(jnp.float32), axis=0)
  return geometric_median(acts)


def init_b_dec(sae: SAE, acts: jax.Array, method: str = "geometric_median") -> SAE:
  """``sae`` with ``b_dec`` set by `initial_b_dec` (the activations' width checked)."""
  if jnp.shape(acts)[-1] != sae.d_in:
    raise BadInputError(f"init_b_dec: activations of shape {jnp.shape(acts)} for an SAE with "
                        f"d_in={sae.d_in} (b_dec {tuple(sae.b_dec.shape)})")
  return sae.replace(b_dec=initial_b_dec(acts, method).astype(sae.b_dec.dtype))


NORMALIZATION_TARGETS = ("unit_mean_squared_norm", "mean_norm_sqrt_d")


def normalization_scale(acts: jax.Array, *, target: str = "unit_mean_squared_norm") -> jax.Array:
  """The scalar s that scales activations (..., D) to the reference trainers' units (computed in
  float32). Train on ``s * x``; save `fold_normalization(sae, s)`.

  ``target``:
    "unit_mean_squared_norm": ``mean_n ||s x_n||^2 = 1``, s = 1 / sqrt(mean_n ||x_n||^2)
      (dictionary_learning's ``normalize_activations``, its ``get_norm_factor``; Gemma Scope's
      section 3.1). The JumpReLU defaults here (threshold and bandwidth 0.001) are
      dictionary_learning's, for these units.
    "mean_norm_sqrt_d": ``mean_n ||s x_n|| = sqrt(D)``, s = sqrt(D) / mean_n ||x_n|| (SAELens's
      ``normalize_activations="expected_average_only_in"``, its ``ActivationScaler``; the mean
      of the norms, not their root mean square). Activations are then sqrt(D) times larger than
      in the first units (for equal norms): scale thresholds, bandwidths and L1 coefficients
      with them.

  All-zero activations have no such scale: the result is then inf (`init_train_state` refuses it).

  Raises:
    BadInputError: an unknown target.
  """
  if target not in NORMALIZATION_TARGETS:
    raise BadInputError(f"normalization_scale: target={target!r}; expected one of "
                        f"{NORMALIZATION_TARGETS}")
  acts = jnp.asarray(acts, jnp.float32)
  squared_norms = jnp.sum(jnp.square(acts), axis=-1)
  if target == "unit_mean_squared_norm":
    return jax.lax.rsqrt(jnp.mean(squared_norms))
  return jnp.sqrt(jnp.float32(acts.shape[-1])) / jnp.mean(jnp.sqrt(squared_norms))


def fold_normalization(sae: SAE, scale: jax.Array | float) -> SAE:
  """The SAE on raw activations equal to ``sae`` trained on ``scale * x``: for every x,
  ``folded(x) = sae(scale * x) / scale`` and ``folded.encode(x) = sae.encode(scale * x) / scale``.

  Exact in real arithmetic: the pre-activations of the folded SAE are those of ``sae`` on
  ``scale * x`` divided by ``scale``, and every activation function here commutes with a positive
  scale once its threshold is divided too. So biases and thresholds are divided by ``scale``, and a
  JumpReLU's bandwidth (the width of its threshold's kernel, in the same units) as well, so that
  training the folded SAE on raw activations takes the steps ``sae`` took on scaled ones. W_enc and
  W_dec are unchanged: unit-norm decoder rows stay unit norm and keep their meaning as directions
  (as dictionary_learning's ``scale_biases``; SAELens's ``fold_activation_norm_scaling_factor``
  instead multiplies W_enc by the scale and divides W_dec and b_dec by it, keeping the codes and
  the threshold).

  ``scale`` must be concrete (not traced) for a JumpReLU SAE: its bandwidth is static.
  """
  changes = {}
  if isinstance(sae, JumpReLUSAE):
    try:
      host_scale = float(scale)
    except jax.errors.ConcretizationTypeError:
      raise BadInputError("fold_normalization: a traced scale for a JumpReLU SAE; its bandwidth "
                          "is static, so fold with a concrete scale (outside jit)") from None
    changes["bandwidth"] = sae.bandwidth / host_scale
  scale = jnp.asarray(scale, jnp.float32)
  changes.update(b_enc=(sae.b_enc / scale).astype(sae.b_enc.dtype),
                 b_dec=(sae.b_dec / scale).astype(sae.b_dec.dtype))
  if isinstance(sae, (JumpReLUSAE, BatchTopKSAE)):
    changes["threshold"] = (sae.threshold / scale).astype(sae.threshold.dtype)
  return sae.replace(**changes)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FiringState:
  """How long each latent has gone without firing.

  Attributes:
    tokens_since_fired: (F,) int32, the examples seen since the latent was last nonzero
      (saturating below the int32 maximum); (..., F) for stacked SAEs.
  """

  tokens_since_fired: jax.Array

  @classmethod
  def zeros(cls, d_sae: int) -> "FiringState":
    return cls(tokens_since_fired=jnp.zeros((d_sae,), jnp.int32))


def update_firing(state: FiringState, fired: jax.Array, num_tokens: int | jax.Array
                  ) -> FiringState:
  """After a batch of ``num_tokens`` examples in which the latents ``fired`` (F,) bool were
  nonzero (`LossAux.fired`): those reset to 0, the others advance by ``num_tokens``."""
  count = state.tokens_since_fired
  num_tokens = jnp.asarray(num_tokens, jnp.int32)
  advanced = jnp.minimum(count, jnp.iinfo(jnp.int32).max - num_tokens) + num_tokens
  return FiringState(tokens_since_fired=jnp.where(fired, jnp.zeros((), jnp.int32), advanced))


def dead_latents(state: FiringState, dead_after_tokens: int | jax.Array) -> jax.Array:
  """(F,) bool: the latents that have not fired for at least ``dead_after_tokens`` examples (OpenAI
  and dictionary_learning use 10,000,000)."""
  return state.tokens_since_fired >= jnp.asarray(dead_after_tokens, jnp.int32)


def _expand_latent_mask(mask: jax.Array, leaf: jax.Array, axis: int) -> jax.Array:
  """``mask`` (*stack, F) shaped to broadcast against ``leaf`` whose latent axis is ``axis``."""
  stack = mask.shape[:-1]
  per_sae = leaf.ndim - len(stack)
  shape = stack + (1,) * (per_sae + axis) + mask.shape[-1:] + (1,) * (-axis - 1)
  return mask.reshape(shape)


def zero_latents(sae: SAE, mask: jax.Array) -> SAE:
  """``sae`` (or an optimizer moment shaped like it) with every latent-indexed entry of the
  latents in ``mask`` zeroed: W_enc columns, b_enc, W_dec rows, and a per-latent threshold.
  ``mask`` is (F,) bool, or (*stack, F) for SAEs stacked with `stack_saes`."""
  mask = jnp.asarray(mask, bool)
  changes = {}
  for name, axis in type(sae).LATENT_AXES.items():
    leaf = getattr(sae, name)
    changes[name] = jnp.where(_expand_latent_mask(mask, leaf, axis), jnp.zeros((), leaf.dtype),
                              leaf)
  return sae.replace(**changes)


def reset_latent_moments(opt_state: Any, mask: jax.Array) -> Any:
  """An optimizer state with the moments of the latents in ``mask`` (F,) zeroed: every
  SAE-shaped node of the state (Adam's ``mu`` and ``nu``, any optax state shaped like the
  params) gets `zero_latents`; everything else (step counts, the other latents' moments) is
  returned unchanged."""
  return map_saes(lambda node: zero_latents(node, mask), opt_state)


def resample_dead_latents(key: jax.Array, sae: SAE, opt_state: Any, acts: jax.Array,
                          dead: jax.Array, *, encoder_scale: float = 0.2
                          ) -> tuple[SAE, Any, jax.Array]:
  """Dead-latent resampling (Bricken et al. 2023; dictionary_learning's ``resample_neurons``).

  Inputs are drawn without replacement with probability proportional to their squared
  reconstruction error ``||x - sae(x)||^2`` (uniformly when every error is 0). The first
  min(N, F) dead latents (by index) each get one: its decoder row becomes the input's unit
  direction, its encoder column that direction times ``encoder_scale`` times the mean encoder
  column norm of the live latents, its encoder bias 0, and its optimizer moments 0
  (`reset_latent_moments`). Every other entry of the SAE and of the optimizer state is unchanged.

  Args:
    key: PRNG key for the draw.
    sae: the SAE; opt_state: its optimizer state (any optax state).
    acts: (..., D) activations to draw from (N examples).
    dead: (F,) bool (`dead_latents`).
    encoder_scale: 0.2 in Bricken et al.

  Returns:
    (sae, opt_state, resampled (F,) bool).

  Raises:
    BadInputError: acts not (..., D) with D the SAE's d_in, or dead not (F,) (both shapes named).
  """
  acts_shape, dead_shape = jnp.shape(acts), jnp.shape(dead)
  if sae.stack_shape:
    raise BadInputError(f"resample_dead_latents: a stack of {sae.stack_shape} SAEs; vmap it over "
                        "the stack")
  if len(acts_shape) < 1 or acts_shape[-1] != sae.d_in or np.prod(acts_shape[:-1]) < 1:
    raise BadInputError(f"resample_dead_latents: acts of shape {acts_shape} for an SAE with "
                        f"d_in={sae.d_in} (W_enc {tuple(sae.W_enc.shape)}); expected (..., "
                        f"{sae.d_in}) with at least one example")
  if dead_shape != (sae.d_sae,):
    raise BadInputError(f"resample_dead_latents: dead of shape {dead_shape} for an SAE with "
                        f"d_sae={sae.d_sae}; expected ({sae.d_sae},)")
  x = jnp.asarray(acts).reshape(-1, sae.d_in)
  dead = jnp.asarray(dead, bool)
  num_examples, width = x.shape[0], sae.d_sae
  errors = jnp.sum(jnp.square((x - sae(x)).astype(jnp.float32)), axis=-1)
  total = jnp.sum(errors)
  probabilities = jnp.where(total > 0, errors / jnp.where(total > 0, total, 1.0),
                            1.0 / num_examples)
  num_draws = min(num_examples, width)
  drawn = jax.random.choice(key, num_examples, (num_draws,), replace=False, p=probabilities)
  position = jnp.cumsum(dead) - 1
  resampled = dead & (position < num_draws)
  chosen = x[drawn[jnp.clip(position, 0, num_draws - 1)]]
  directions = _unit_rows(chosen)
  alive = ~dead
  encoder_norms = jnp.linalg.norm(sae.W_enc.astype(jnp.float32), axis=0)
  alive_norm = jnp.where(jnp.any(alive), jnp.sum(encoder_norms * alive) /
                         jnp.maximum(jnp.sum(alive), 1), 1.0)
  new_encoder = (directions * (alive_norm * encoder_scale)).T
  updated = sae.replace(
      W_enc=jnp.where(resampled[None, :], new_encoder.astype(sae.W_enc.dtype), sae.W_enc),
      W_dec=jnp.where(resampled[:, None], directions.astype(sae.W_dec.dtype), sae.W_dec),
      b_enc=jnp.where(resampled, jnp.zeros((), sae.b_enc.dtype), sae.b_enc))
  return updated, reset_latent_moments(opt_state, resampled), resampled


def k_annealing(start_k: int, target_k: int, anneal_steps: int) -> Callable[[Any], jax.Array]:
  """A schedule step -> k (int32) from ``start_k`` down to ``target_k`` over ``anneal_steps``,
  then ``target_k``: ``floor(start (1 - r) + target r)`` with ``r = min(step, anneal_steps) /
  anneal_steps`` (dictionary_learning's ``update_annealed_k``, which starts from D).

  Computed exactly (a table built here in integers, indexed by the traced step). Use the SAE's
  static k = ``start_k`` and pass the schedule's value as the loss's traced ``k``.
  """
  if not (isinstance(start_k, int) and isinstance(target_k, int) and 1 <= target_k <= start_k):
    raise BadInputError(f"k_annealing: need ints 1 <= target_k <= start_k; got "
                        f"start_k={start_k!r}, target_k={target_k!r}")
  if not isinstance(anneal_steps, int) or anneal_steps < 1:
    raise BadInputError(f"k_annealing: anneal_steps={anneal_steps!r} must be an int >= 1")
  steps = np.arange(anneal_steps + 1, dtype=np.int64)
  table = jnp.asarray((start_k * (anneal_steps - steps) + target_k * steps) // anneal_steps,
                      jnp.int32)

  def schedule(step):
    return table[jnp.clip(jnp.asarray(step, jnp.int32), 0, anneal_steps)]

  return schedule


def update_batchtopk_threshold(sae: BatchTopKSAE, smallest_code: jax.Array, *,
                               beta: float = 0.999) -> BatchTopKSAE:
  """BatchTopK's inference threshold after a training batch whose smallest kept code was
  ``smallest_code`` (`LossAux.smallest_code`): that value the first time (the threshold is
  negative until then), then ``beta * threshold + (1 - beta) * smallest_code``
  (dictionary_learning, which starts updating after 1,000 steps)."""
  threshold = sae.threshold
  smallest_code = jnp.asarray(smallest_code, jnp.float32)
  updated = jnp.where(threshold < 0, smallest_code, beta * threshold + (1 - beta) * smallest_code)
  return sae.replace(threshold=updated.astype(threshold.dtype))
