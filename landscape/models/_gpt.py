"""A GPT-2 style decoder with sites on the residual stream, the attention and the MLP of each block.

Parameters are float32; matmuls and attention run in ``compute_dtype``. The residual stream, the
LayerNorms and the logits stay float32, so a bfloat16 model adds bfloat16 block outputs into a
float32 stream. Sites therefore carry float32 (``embed``, ``resid_pre``, ``resid_post``) or
``compute_dtype`` (``attn_out``, ``mlp_hidden``, ``mlp_out``) activations.

With ``scan_layers`` the blocks' parameters are stacked on a leading layer axis (L, ...) and the
forward pass is one `jax.lax.scan` over layers; the site names, captures and interventions are those
of the unscanned model (see `ScannedSites`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from landscape.models._adapter import Model
from landscape.models._adapter import from_nnx
from landscape.sites import ParamLink
from landscape.sites import Sites
from landscape.sites import BadInputError

_BLOCK_SITE_KINDS = ("resid_pre", "attn_out", "mlp_hidden", "mlp_out", "resid_post")
_POSITIONS = ("learned", "rotary")
_ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", None)
_ROTARY_BASE = 10_000.0


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """The shape of a GPT decoder.

  Attributes:
    vocab_size: number of token ids V.
    max_len: the longest sequence T; the size of the learned position table.
    d_model: width D of the residual stream.
    num_layers: number of blocks L.
    num_heads: attention heads; must divide d_model.
    d_mlp: width of the MLP hidden layer; None means 4 * d_model.
    positions: "learned" (a position table added to the token embedding) or "rotary" (rotary
      embeddings on queries and keys; the head width must be even).
    attention: the ``implementation`` of `jax.nn.dot_product_attention`: "xla", "cudnn" (GPU with a
      16-bit compute_dtype) or None (JAX picks).
    compute_dtype: dtype of matmuls and attention; parameters stay float32, logits are float32.
    scan_layers: stack the blocks' parameters on a leading axis and scan over them.
    tie_embeddings: unembed with the token embedding table instead of a separate kernel.
    layer_norm_epsilon: epsilon of every LayerNorm.
  """

  vocab_size: int
  max_len: int
  d_model: int
  num_layers: int
  num_heads: int
  d_mlp: int | None = None
  positions: str = "learned"
  attention: str | None = None
  compute_dtype: Any = jnp.float32
  scan_layers: bool = False
  tie_embeddings: bool = True
  layer_norm_epsilon: float = 1e-5

  def __post_init__(self):
    if self.positions not in _POSITIONS:
      raise BadInputError(f"GPTConfig: positions must be one of {_POSITIONS}, got {self.positions!r}")
    if self.attention not in _ATTENTION_IMPLEMENTATIONS:
      raise BadInputError(f"GPTConfig: attention must be one of {_ATTENTION_IMPLEMENTATIONS}, got "
                          f"{self.attention!r}")
    if self.d_model % self.num_heads:
      raise BadInputError(f"GPTConfig: num_heads={self.num_heads} does not divide "
                          f"d_model={self.d_model}")
    if self.positions == "rotary" and self.head_width % 2:
      raise BadInputError(
          f"GPTConfig: rotary positions need an even head width, got {self.head_width}")
    if self.num_layers < 1:
      raise BadInputError(f"GPTConfig: num_layers must be at least 1, got {self.num_layers}")

  @property
  def mlp_width(self) -> int:
    return self.d_mlp if self.d_mlp is not None else 4 * self.d_model

  @property
  def head_width(self) -> int:
    return self.d_model // self.num_heads

  @classmethod
  def gpt2_small(cls, **overrides) -> "GPTConfig":
    """GPT-2 small (124M parameters), with the vocabulary padded to a multiple of 64."""
    return cls(**{**dict(vocab_size=50304, max_len=1024, d_model=768, num_layers=12, num_heads=12),
                  **overrides})

  @classmethod
  def tiny(cls, **overrides) -> "GPTConfig":
    """A two-block model for tests and smoke runs."""
    return cls(**{**dict(vocab_size=64, max_len=16, d_model=32, num_layers=2, num_heads=4),
                  **overrides})


def _rotary_angles(length: int, head_width: int) -> tuple[jax.Array, jax.Array]:
  """(cos, sin) of the rotary angles, each (T, head_width // 2) float32."""
  frequencies = _ROTARY_BASE ** (-jnp.arange(0, head_width, 2, dtype=jnp.float32) / head_width)
  angles_TxF = jnp.arange(length, dtype=jnp.float32)[:, None] * frequencies[None, :]
  return jnp.cos(angles_TxF), jnp.sin(angles_TxF)


def _apply_rotary(x_BxTxNxH: jax.Array, cos_TxF: jax.Array, sin_TxF: jax.Array) -> jax.Array:
  """Rotates the two halves of every head's features by the position's angles (NeoX layout)."""
  first, second = jnp.split(x_BxTxNxH.astype(jnp.float32), 2, axis=-1)
  cos, sin = cos_TxF[None, :, None, :], sin_TxF[None, :, None, :]
  rotated = jnp.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1)
  return rotated.astype(x_BxTxNxH.dtype)


def _dense(config: GPTConfig, width_in: int, width_out: int, *, std: float,
           rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(width_in, width_out, kernel_init=nnx.initializers.normal(std),
                    dtype=jnp.dtype(config.compute_dtype), param_dtype=jnp.float32, rngs=rngs)


def _layer_norm(config: GPTConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(config.d_model, epsilon=config.layer_norm_epsilon, dtype=jnp.float32,
                       param_dtype=jnp.float32, rngs=rngs)


def _residual_std(config: GPTConfig) -> float:
  # GPT-2 scales the projections that add into the residual stream by 1/sqrt(2L): 2L such adds.
  return 0.02 / math.sqrt(2 * config.num_layers)


class _CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention with a fused query/key/value projection.

  ``qkv.kernel`` is (D, 3D): its output columns are queries, keys then values, each (heads, head
  width) in row-major order. ``out.kernel`` is (D, D).
  """

  def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
    self.num_heads = config.num_heads
    self.implementation = config.attention
    self.qkv = _dense(config, config.d_model, 3 * config.d_model, std=0.02, rngs=rngs)
    self.out = _dense(config, config.d_model, config.d_model, std=_residual_std(config), rngs=rngs)

  def __call__(self, x_BxTxD: jax.Array,
               rotary: tuple[jax.Array, jax.Array] | None) -> jax.Array:
    """(B, T, D) -> (B, T, D) in compute dtype; position t attends to positions <= t."""
    batch, length, width = x_BxTxD.shape
    qkv_BxTx3xNxH = self.qkv(x_BxTxD).reshape(
        batch, length, 3, self.num_heads, width // self.num_heads)
    query, key, value = (qkv_BxTx3xNxH[:, :, i] for i in range(3))
    if rotary is not None:
      query, key = _apply_rotary(query, *rotary), _apply_rotary(key, *rotary)
    attended_BxTxNxH = jax.nn.dot_product_attention(
        query, key, value, is_causal=True, implementation=self.implementation)
    return self.out(attended_BxTxNxH.reshape(batch, length, width))


class _MLPBlock(nnx.Module):
  """The block's MLP: ``hidden`` (D, d_mlp), gelu, ``out`` (d_mlp, D)."""

  def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
    self.hidden = _dense(config, config.d_model, config.mlp_width, std=0.02, rngs=rngs)
    self.out = _dense(config, config.mlp_width, config.d_model, std=_residual_std(config),
                      rngs=rngs)


class _Block(nnx.Module):
  """A pre-LayerNorm transformer block; calls ``sites`` at each of `_BLOCK_SITE_KINDS`."""

  def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
    self.ln_1 = _layer_norm(config, rngs)
    self.attention = _CausalSelfAttention(config, rngs=rngs)
    self.ln_2 = _layer_norm(config, rngs)
    self.mlp = _MLPBlock(config, rngs=rngs)

  def __call__(self, resid_BxTxD: jax.Array, sites: Any,
               rotary: tuple[jax.Array, jax.Array] | None) -> jax.Array:
    """(B, T, D) float32 residual stream in and out; ``sites`` names the block's sites by kind."""
    x = sites("resid_pre", resid_BxTxD)
    attn_out = sites("attn_out", self.attention(self.ln_1(x), rotary))
    x = x + attn_out.astype(x.dtype)
    mlp_hidden = sites("mlp_hidden", jax.nn.gelu(self.mlp.hidden(self.ln_2(x))))
    mlp_out = sites("mlp_out", self.mlp.out(mlp_hidden))
    x = x + mlp_out.astype(x.dtype)
    return sites("resid_post", x)


def _stack_modules(modules: list[nnx.Module]) -> nnx.Module:
  """One module shaped like each of ``modules``, every parameter the stack (L, ...) of theirs."""
  graphdef, _ = nnx.split(modules[0])
  states = [nnx.state(module) for module in modules]
  return nnx.merge(graphdef, jax.tree.map(lambda *leaves: jnp.stack(leaves), *states))


class GPT(nnx.Module):
  """A decoder-only transformer: int tokens (B, T) -> float32 logits (B, T, V).

  Sites, in forward order: ``embed`` (the token embedding, plus the position embedding when
  positions are learned), then for each block i ``blocks.{i}.resid_pre``, ``blocks.{i}.attn_out``
  (the attention output projection, before it is added to the stream), ``blocks.{i}.mlp_hidden``
  (after gelu, width d_mlp), ``blocks.{i}.mlp_out`` and ``blocks.{i}.resid_post``.

  Params: ``token_embed.embedding`` (V, D), ``position_embed.embedding`` (max_len, D) when learned,
  ``blocks.{i}.{ln_1, attention.qkv, attention.out, ln_2, mlp.hidden, mlp.out}`` (with scan_layers:
  ``blocks.{...}`` with a leading (L,) axis), ``ln_final`` and, untied, ``unembed.kernel`` (D, V).
  With the same key, the scanned model's params are the unscanned model's blocks stacked.
  """

  def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
    self.config = config
    embedding_init = nnx.initializers.normal(0.02)
    self.token_embed = nnx.Embed(config.vocab_size, config.d_model, embedding_init=embedding_init,
                                 dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
    if config.positions == "learned":
      self.position_embed = nnx.Embed(config.max_len, config.d_model,
                                      embedding_init=embedding_init, dtype=jnp.float32,
                                      param_dtype=jnp.float32, rngs=rngs)
    blocks = [_Block(config, rngs=rngs) for _ in range(config.num_layers)]
    self.blocks = _stack_modules(blocks) if config.scan_layers else nnx.List(blocks)
    self.ln_final = _layer_norm(config, rngs)
    if not config.tie_embeddings:
      self.unembed = nnx.Linear(config.d_model, config.vocab_size, use_bias=False,
                                kernel_init=embedding_init, param_dtype=jnp.float32, rngs=rngs)

  def site_names(self) -> tuple[str, ...]:
    return ("embed",) + tuple(f"blocks.{i}.{kind}" for i in range(self.config.num_layers)
                              for kind in _BLOCK_SITE_KINDS)

  def site_links(self) -> dict[str, tuple[ParamLink, ...]]:
    """The parameters that write into and read from every site.

    The residual stream after i blocks (``embed`` for i = 0, ``blocks.{i-1}.resid_post`` and
    ``blocks.{i}.resid_pre``) is written by the token (and position) embedding for i = 0, else by
    block i-1's ``attention.out`` and ``mlp.out`` (kernel axis 1, bias axis 0). It is read, through
    LayerNorm, by block i's ``attention.qkv`` and ``mlp.hidden`` kernels (axis 0) or, after the last
    block, by the unembedding (axis 0 of ``unembed.kernel``, or axis 1 of the tied token table).
    LayerNorm scales and biases act elementwise, not as maps into or out of the space: left out.
    Stacked (scanned) parameters carry ``index=i`` and the axis of the unstacked leaf.
    """
    config = self.config
    links = {"embed": self._residual_links(0)}
    for i in range(config.num_layers):
      links[f"blocks.{i}.resid_pre"] = self._residual_links(i)
      links[f"blocks.{i}.attn_out"] = self._output_links(i, ("attention", "out"))
      links[f"blocks.{i}.mlp_hidden"] = self._output_links(i, ("mlp", "hidden")) + (
          self._block_link(i, ("mlp", "out", "kernel"), 0, "reads"),)
      links[f"blocks.{i}.mlp_out"] = self._output_links(i, ("mlp", "out"))
      links[f"blocks.{i}.resid_post"] = self._residual_links(i + 1)
    return links

  def _block_link(self, layer: int, path: tuple[str, ...], axis: int, role: str) -> ParamLink:
    if self.config.scan_layers:
      return ParamLink(("blocks",) + path, axis=axis, role=role, index=layer)
    return ParamLink(("blocks", str(layer)) + path, axis=axis, role=role)

  def _output_links(self, layer: int, dense: tuple[str, ...]) -> tuple[ParamLink, ...]:
    return (self._block_link(layer, dense + ("kernel",), 1, "writes"),
            self._block_link(layer, dense + ("bias",), 0, "writes"))

  def _residual_links(self, num_blocks_before: int) -> tuple[ParamLink, ...]:
    config, i = self.config, num_blocks_before
    if i == 0:
      writes = (ParamLink(("token_embed", "embedding"), axis=1, role="writes"),)
      if config.positions == "learned":
        writes += (ParamLink(("position_embed", "embedding"), axis=1, role="writes"),)
    else:
      writes = (self._output_links(i - 1, ("attention", "out"))
                + self._output_links(i - 1, ("mlp", "out")))
    if i < config.num_layers:
      reads = (self._block_link(i, ("attention", "qkv", "kernel"), 0, "reads"),
               self._block_link(i, ("mlp", "hidden", "kernel"), 0, "reads"))
    elif config.tie_embeddings:
      reads = (ParamLink(("token_embed", "embedding"), axis=1, role="reads"),)
    else:
      reads = (ParamLink(("unembed", "kernel"), axis=0, role="reads"),)
    return writes + reads

  def __call__(self, tokens_BxT: jax.Array, sites: Sites) -> jax.Array:
    config = self.config
    length = tokens_BxT.shape[1]
    x_BxTxD = self.token_embed(tokens_BxT)
    rotary = None
    if config.positions == "learned":
      if length > config.max_len:
        raise BadInputError(f"GPT: {length} tokens exceed max_len={config.max_len}")
      x_BxTxD = x_BxTxD + self.position_embed.embedding[...][None, :length]
    else:
      rotary = _rotary_angles(length, config.head_width)
    x_BxTxD = sites("embed", x_BxTxD)
    if config.scan_layers:
      x_BxTxD = self._scan_blocks(x_BxTxD, sites, rotary)
    else:
      for i, block in enumerate(self.blocks):
        x_BxTxD = block(x_BxTxD, sites.scoped(f"blocks.{i}"), rotary)
    return self._logits(self.ln_final(x_BxTxD))

  def _scan_blocks(self, x_BxTxD: jax.Array, sites: Sites,
                   rotary: tuple[jax.Array, jax.Array] | None) -> jax.Array:
    num_layers = self.config.num_layers
    scanned = sites.scanned("blocks", num_layers)
    # The blocks hold only Params and never update them, so each iteration can rebuild its layer
    # from a slice of the stacked state and nothing needs to flow back out of the scan.
    graphdef, stacked_state = nnx.split(self.blocks)

    def body(x, layer):
      layer_state, index = layer
      view = scanned.at(index)
      x = nnx.merge(graphdef, layer_state)(x, view, rotary)
      return x, view.outputs()

    x_BxTxD, captured = jax.lax.scan(body, x_BxTxD, (stacked_state, jnp.arange(num_layers)))
    scanned.finish(captured)
    return x_BxTxD

  def _logits(self, x_BxTxD: jax.Array) -> jax.Array:
    compute_dtype = jnp.dtype(self.config.compute_dtype)
    x_BxTxD = x_BxTxD.astype(compute_dtype)
    if self.config.tie_embeddings:
      table_VxD = self.token_embed.embedding[...].astype(compute_dtype)
      return jnp.einsum("btd,vd->btv", x_BxTxD, table_VxD, preferred_element_type=jnp.float32)
    kernel_DxV = self.unembed.kernel[...].astype(compute_dtype)
    return jnp.einsum("btd,dv->btv", x_BxTxD, kernel_DxV, preferred_element_type=jnp.float32)


def gpt(config: GPTConfig) -> Model:
  """A `GPT` as a `Model`: apply(params, tokens (B, T) int, sites) -> logits (B, T, V) float32."""
  return from_nnx(lambda rngs: GPT(config, rngs=rngs), name="gpt")
