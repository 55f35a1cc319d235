"""Sparse autoencoders as pytrees of four arrays (five with a threshold), in SAELens's layout.

Every architecture maps an activation x (..., D) to codes (..., F) and back:

    pre    = (x - b_dec) @ W_enc + b_enc          (x @ W_enc + b_enc when not apply_b_dec_to_input)
    codes  = activation(pre)                     (TopK, BatchTopK, JumpReLU or ReLU)
    x_hat  = codes @ W_dec + b_dec

with ``W_enc`` (D, F), ``b_enc`` (F,), ``W_dec`` (F, D), ``b_dec`` (D,), as SAELens stores them,
so a decoder row ``W_dec[i]`` is feature i's direction in the site's space. Arrays are leaves;
hyper-parameters that fix shapes or code paths (k, the JumpReLU bandwidth, whether b_dec is
subtracted from the input) are static, so an SAE can be passed into, vmapped over and returned from
jitted functions, live in a train state, and be checkpointed. Stacked SAEs (see `stack_saes`) carry
leading axes on every leaf; the methods act on one SAE, so vmap them over a stack.

An SAE is also an intervention: ``model.forward(params, inputs, interventions={site: sae})``
replaces the site's activation with its reconstruction (its ``width`` is checked against the
site's).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp

from landscape.sae._topk import top_k
from landscape.sites import BadInputError


def along_last(vector: jax.Array, like: jax.Array) -> jax.Array:
  """``vector`` (n,) shaped (1, ..., 1, n) to combine with ``like`` (..., n) without implicit rank
  promotion."""
  return jnp.reshape(vector, (1,) * (like.ndim - vector.ndim) + vector.shape)


def scatter_last(values: jax.Array, indices: jax.Array, width: int) -> jax.Array:
  """Zeros (..., width) holding ``values`` (..., k) at ``indices`` (..., k) of the last axis."""
  lead = values.shape[:-1]
  flat_values = values.reshape(-1, values.shape[-1])
  flat_indices = indices.reshape(-1, indices.shape[-1])
  rows = jnp.arange(flat_values.shape[0])[:, None]
  dense = jnp.zeros((flat_values.shape[0], width), values.dtype).at[rows, flat_indices].set(
      flat_values)
  return dense.reshape(lead + (width,))


def keep_first(values: jax.Array, count: jax.Array | int | None) -> jax.Array:
  """``values`` (..., m) with entries at positions >= ``count`` (a traced int) zeroed; unchanged
  when ``count`` is None. Top-k values come sorted, so this turns a top k_max into a top ``count``
  (a prefix of `jax.lax.top_k`'s output is the top-k of a smaller k, ties included)."""
  if count is None:
    return values
  positions = jnp.arange(values.shape[-1])
  keep = positions < jnp.asarray(count, jnp.int32)
  return jnp.where(along_last(keep, values), values, jnp.zeros((), values.dtype))


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class SAE:
  """What every architecture shares. Not instantiated itself: use `TopKSAE`, `BatchTopKSAE`,
  `JumpReLUSAE` or `StandardSAE`.

  Attributes:
    W_enc: (D, F) encoder.
    b_enc: (F,) encoder bias.
    W_dec: (F, D) decoder; row i is feature i's direction.
    b_dec: (D,) decoder bias, subtracted from the input first when ``apply_b_dec_to_input``.
    apply_b_dec_to_input: static; SAELens's flag of the same name.
  """

  W_enc: jax.Array
  b_enc: jax.Array
  W_dec: jax.Array
  b_dec: jax.Array
  apply_b_dec_to_input: bool = dataclasses.field(default=True, metadata=dict(static=True))

  architecture: ClassVar[str] = ""
  # Leaves indexed by latent, and the axis (counted from the end) that indexes it.
  LATENT_AXES: ClassVar[dict[str, int]] = {"W_enc": -1, "b_enc": -1, "W_dec": -2}

  @property
  def d_in(self) -> int:
    return self.W_enc.shape[-2]

  @property
  def d_sae(self) -> int:
    return self.W_enc.shape[-1]

  @property
  def width(self) -> int:
    """The width of the site it reads and writes (D): what `apply_intervention` checks."""
    return self.d_in

  @property
  def stack_shape(self) -> tuple[int, ...]:
    """The leading axes of stacked SAEs; () for one SAE."""
    return self.b_dec.shape[:-1]

  def replace(self, **changes) -> "SAE":
    return dataclasses.replace(self, **changes)

  def pre_activations(self, x: jax.Array) -> jax.Array:
    """(..., D) -> (..., F): the encoder's affine map, before the activation function."""
    if self.apply_b_dec_to_input:
      x = x - along_last(self.b_dec.astype(x.dtype), x)
    pre = x @ self.W_enc
    return pre + along_last(self.b_enc.astype(pre.dtype), pre)

  def activate(self, pre: jax.Array) -> jax.Array:
    """The inference activation function, (..., F) -> (..., F)."""
    raise NotImplementedError

  def encode(self, x: jax.Array) -> jax.Array:
    """(..., D) -> codes (..., F), nonnegative; each example on its own (inference form)."""
    return self.activate(self.pre_activations(x))

  def decode(self, codes: jax.Array) -> jax.Array:
    """(..., F) -> (..., D): ``codes @ W_dec + b_dec``."""
    out = codes @ self.W_dec
    return out + along_last(self.b_dec.astype(out.dtype), out)

  def __call__(self, x: jax.Array) -> jax.Array:
    """The reconstruction x_hat (..., D) of x (..., D)."""
    return self.decode(self.encode(x))


def _check_k(k: int, d_sae: int, what: str) -> None:
  if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= d_sae:
    raise BadInputError(f"{what}: k={k!r} must be an int in [1, d_sae={d_sae}]")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class TopKSAE(SAE):
  """Keeps the k largest codes of each example (Gao et al. 2024; SAELens "topk").

  codes = the top k of ReLU(pre) per example, zero elsewhere (ReLU first, as dictionary_learning
  does; SAELens takes the top k of pre and then the ReLU: the codes are the same).

  Attributes:
    k: static; the number of latents kept per example. A smaller k can be given per call as a
      traced value (`encode(x, k=...)`, k annealing, SAEs of different k stacked): the top
      ``self.k`` are found and those past the given count zeroed.
    top_k_method: static; how the top k is found ("auto", "plain" or "two_stage", see `top_k`).
  """

  k: int = dataclasses.field(metadata=dict(static=True))
  top_k_method: str = dataclasses.field(default="auto", metadata=dict(static=True))

  architecture: ClassVar[str] = "topk"

  def top_latents(self, pre: jax.Array, k: jax.Array | int | None = None
                  ) -> tuple[jax.Array, jax.Array]:
    """(values (..., self.k), indices (..., self.k)) of the top codes, values past ``k`` zeroed."""
    values, indices = top_k(jax.nn.relu(pre), self.k, method=self.top_k_method)
    return keep_first(values, k), indices

  def activate(self, pre: jax.Array, k: jax.Array | int | None = None) -> jax.Array:
    values, indices = self.top_latents(pre, k)
    return scatter_last(values, indices, pre.shape[-1])

  def encode(self, x: jax.Array, k: jax.Array | int | None = None) -> jax.Array:
    """(..., D) -> codes (..., F) with at most ``k`` (default: ``self.k``) nonzero per example."""
    return self.activate(self.pre_activations(x), k)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class BatchTopKSAE(SAE):
  """Keeps the k x N largest codes of a batch of N examples (Bussmann et al. 2024).

  Training uses the batch-level top-k (`encode_batch`); inference (`encode`, `__call__`) is its
  JumpReLU form with one global threshold, estimated during training as an exponential moving
  average of the smallest code the batch top-k kept (`update_batchtopk_threshold`, as
  dictionary_learning does), so an example's codes do not depend on the rest of its batch.

  Attributes:
    threshold: float32 scalar (a leaf); codes above it are kept at inference. Negative until the
      first estimate (then every positive code is kept). Not learned by gradient (its gradient is
      zero): keep it out of weight decay (``optax.masked``) if the optimizer has any.
    k: static; the mean number of latents per example in training.
    top_k_method: static; see `top_k`.
  """

  threshold: jax.Array
  k: int = dataclasses.field(metadata=dict(static=True))
  top_k_method: str = dataclasses.field(default="auto", metadata=dict(static=True))

  architecture: ClassVar[str] = "batchtopk"

  def activate(self, pre: jax.Array) -> jax.Array:
    post = jax.nn.relu(pre)
    threshold = jnp.reshape(self.threshold, (1,) * post.ndim).astype(post.dtype)
    return jnp.where(post > threshold, post, jnp.zeros((), post.dtype))

  def activate_batch(self, pre: jax.Array, k: jax.Array | int | None = None) -> jax.Array:
    """Training form: codes (..., F) keeping the ``k`` x N largest ReLU codes over all N examples
    of ``pre`` (all leading axes together); ``k`` (traced, <= self.k) defaults to ``self.k``."""
    post = jax.nn.relu(pre)
    num_examples = post.size // post.shape[-1]
    flat = post.reshape(1, -1)
    values, indices = top_k(flat, self.k * num_examples, method=self.top_k_method)
    if k is not None:
      values = keep_first(values, jnp.asarray(k, jnp.int32) * num_examples)
    return scatter_last(values, indices, flat.shape[-1]).reshape(post.shape)

  def encode_batch(self, x: jax.Array, k: jax.Array | int | None = None) -> jax.Array:
    """Training form of `encode`: see `activate_batch`."""
    return self.activate_batch(self.pre_activations(x), k)


def _rectangle(u: jax.Array) -> jax.Array:
  return ((u > -0.5) & (u < 0.5)).astype(u.dtype)


def _sum_to_threshold(per_element: jax.Array, threshold: jax.Array) -> jax.Array:
  return jnp.sum(per_element, axis=tuple(range(per_element.ndim - threshold.ndim))).astype(
      threshold.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(pre: jax.Array, threshold: jax.Array, bandwidth: float) -> jax.Array:
  """ReLU(pre) where pre > threshold, else 0; threshold (F,) or (), pre (..., F).

  Gradients (Rajamanoharan et al. 2024, as SAELens and dictionary_learning): to pre, 1 where
  pre > threshold and pre > 0; to the threshold, the straight-through estimate
  ``-(threshold / bandwidth) * rect((pre - threshold) / bandwidth)`` per element, summed over the
  leading axes, with rect the indicator of (-1/2, 1/2).
  """
  return _jumprelu_value(pre, threshold)


def _jumprelu_value(pre, threshold):
  threshold = along_last(threshold, pre).astype(pre.dtype)
  return jnp.where(pre > threshold, jax.nn.relu(pre), jnp.zeros((), pre.dtype))


def _jumprelu_forward(pre, threshold, bandwidth):
  return _jumprelu_value(pre, threshold), (pre, threshold)


def _jumprelu_backward(bandwidth, residuals, cotangent):
  pre, threshold = residuals
  wide = along_last(threshold, pre).astype(pre.dtype)
  pre_gradient = jnp.where((pre > wide) & (pre > 0), cotangent, jnp.zeros((), cotangent.dtype))
  per_element = -(wide / bandwidth) * _rectangle((pre - wide) / bandwidth) * cotangent
  return pre_gradient, _sum_to_threshold(per_element, threshold)


jumprelu.defvjp(_jumprelu_forward, _jumprelu_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def heaviside_step(pre: jax.Array, threshold: jax.Array, bandwidth: float) -> jax.Array:
  """1 where pre > threshold, else 0 (in pre's dtype), for JumpReLU's L0 penalty.

  Gradients: none to pre; to the threshold ``-(1 / bandwidth) * rect((pre - threshold) /
  bandwidth)`` per element, summed over the leading axes.
  """
  return _step_value(pre, threshold)


def _step_value(pre, threshold):
  return (pre > along_last(threshold, pre).astype(pre.dtype)).astype(pre.dtype)


def _step_forward(pre, threshold, bandwidth):
  return _step_value(pre, threshold), (pre, threshold)


def _step_backward(bandwidth, residuals, cotangent):
  pre, threshold = residuals
  wide = along_last(threshold, pre).astype(pre.dtype)
  per_element = -(1.0 / bandwidth) * _rectangle((pre - wide) / bandwidth) * cotangent
  return jnp.zeros_like(pre), _sum_to_threshold(per_element, threshold)


heaviside_step.defvjp(_step_forward, _step_backward)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class JumpReLUSAE(SAE):
  """ReLU(pre) where pre exceeds a learned per-latent threshold (Rajamanoharan et al. 2024;
  Gemma Scope; SAELens "jumprelu").

  Attributes:
    threshold: (F,) leaf, learned through the straight-through estimator of `jumprelu`; positive
      (`sae_optimizer` keeps it so with `positive_threshold`).
    bandwidth: static; the width of the rectangle kernel of the threshold's pseudo-derivative
      (training only; in the units of pre, so it scales with the inputs: dictionary_learning uses
      0.001 for activations of norm about sqrt(D), SAELens 0.05).
    apply_b_dec_to_input: False by default here, as in Gemma Scope and dictionary_learning.
  """

  threshold: jax.Array
  bandwidth: float = dataclasses.field(default=0.001, metadata=dict(static=True))
  apply_b_dec_to_input: bool = dataclasses.field(default=False, metadata=dict(static=True))

  architecture: ClassVar[str] = "jumprelu"
  LATENT_AXES: ClassVar[dict[str, int]] = {**SAE.LATENT_AXES, "threshold": -1}

  def activate(self, pre: jax.Array) -> jax.Array:
    return jumprelu(pre, self.threshold, self.bandwidth)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class StandardSAE(SAE):
  """codes = ReLU(pre), trained with an L1 penalty (Bricken et al. 2023; SAELens "standard")."""

  architecture: ClassVar[str] = "standard"

  def activate(self, pre: jax.Array) -> jax.Array:
    return jax.nn.relu(pre)


ARCHITECTURES: dict[str, type[SAE]] = {
    cls.architecture: cls for cls in (TopKSAE, BatchTopKSAE, JumpReLUSAE, StandardSAE)}


@functools.partial(jax.jit, static_argnames=("d_in", "d_sae", "tied", "dtype"))
def _initial_weights(key: jax.Array, d_in: int, d_sae: int, *, tied: bool, decoder_norm: float,
                     dtype: jnp.dtype) -> dict[str, jax.Array]:
  decoder_key, encoder_key = jax.random.split(key)
  directions = jax.random.normal(decoder_key, (d_sae, d_in), jnp.float32)
  W_dec = directions / jnp.linalg.norm(directions, axis=-1, keepdims=True) * decoder_norm
  if tied:
    W_enc = W_dec.T
  else:
    columns = jax.random.normal(encoder_key, (d_in, d_sae), jnp.float32)
    W_enc = columns / jnp.linalg.norm(columns, axis=0, keepdims=True)
  return dict(W_enc=W_enc.astype(dtype), b_enc=jnp.zeros((d_sae,), dtype),
              W_dec=W_dec.astype(dtype), b_dec=jnp.zeros((d_in,), dtype))


def init_sae(key: jax.Array, architecture: str, d_in: int, d_sae: int, *, k: int | None = None,
             tied: bool = True, decoder_norm: float = 1.0, threshold: float = 0.001,
             bandwidth: float = 0.001, apply_b_dec_to_input: bool | None = None,
             top_k_method: str = "auto", dtype: jnp.dtype = jnp.float32) -> SAE:
  """A new SAE: decoder rows random unit directions times ``decoder_norm``, zero biases.

  Args:
    key: PRNG key.
    architecture: "topk", "batchtopk", "jumprelu" or "standard".
    d_in: D, the site's width; d_sae: F, the number of latents.
    k: for "topk" and "batchtopk", the latents per example (static).
    tied: the encoder initialised as the decoder's transpose (Conerly et al. 2024, Gao et al.
      2024; the references' default); otherwise an independent random encoder, unit columns.
    decoder_norm: the norm of each initial decoder row (SAELens trains with 0.1, dictionary_learning
      and OpenAI with 1).
    threshold: "jumprelu": the initial per-latent threshold (dictionary_learning's 0.001).
    bandwidth: "jumprelu": the kernel width of the threshold's pseudo-derivative
      (dictionary_learning's 0.001, for activations scaled to unit mean squared norm).
    apply_b_dec_to_input: subtract b_dec before encoding; default True, but False for "jumprelu".
    top_k_method: for "topk" and "batchtopk"; see `top_k`.
    dtype: of every leaf.

  Raises:
    BadInputError: an unknown architecture (named), or a missing or out-of-range k.
  """
  if architecture not in ARCHITECTURES:
    raise BadInputError(f"init_sae: unknown architecture {architecture!r}; known: "
                        f"{sorted(ARCHITECTURES)}")
  if d_in < 1 or d_sae < 1:
    raise BadInputError(f"init_sae: d_in={d_in} and d_sae={d_sae} must be >= 1")
  weights = _initial_weights(key, d_in=int(d_in), d_sae=int(d_sae), tied=bool(tied),
                             decoder_norm=decoder_norm, dtype=jnp.dtype(dtype))
  if apply_b_dec_to_input is not None:
    weights["apply_b_dec_to_input"] = bool(apply_b_dec_to_input)
  if architecture in ("topk", "batchtopk"):
    _check_k(k, d_sae, f"init_sae({architecture!r})")
    weights.update(k=k, top_k_method=top_k_method)
    if architecture == "batchtopk":
      weights["threshold"] = jnp.asarray(-1.0, jnp.float32)
  elif k is not None:
    raise BadInputError(f"init_sae({architecture!r}): k={k} is only for topk and batchtopk")
  if architecture == "jumprelu":
    weights.update(threshold=jnp.full((d_sae,), threshold, dtype), bandwidth=float(bandwidth))
  return ARCHITECTURES[architecture](**weights)
