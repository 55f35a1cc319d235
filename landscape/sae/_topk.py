"""Top-k over the last axis: `jax.lax.top_k`, or in two stages where that is faster.

`two_stage_top_k` takes the top k of each chunk of the last axis, then the top k of those
candidates. Its values and indices equal `jax.lax.top_k`'s exactly, ties included: `lax.top_k`
puts the lower index first among equal values, so each chunk's equal values come out in index
order, the candidates of chunk c precede those of chunk c + 1, and the second `lax.top_k` keeps
that order. Every element of the global top k is in its chunk's top k (fewer than k elements of
the chunk rank ahead of it), so nothing is lost in the first stage.

Which is faster depends on the backend. On a CPU, XLA's top-k over the whole width was faster at
every size measured (256 x 65,536, k = 32: 33 ms plain, 89 ms in two stages of 16,384; 1 x 4M,
k = 8,192: 28 ms plain, 416 ms two-stage), so `top_k` never uses two stages there. On accelerators,
where a top-k over a wide row is a sort-like pass, it does so from `TWO_STAGE_MIN_WIDTH` on; that
threshold awaits a measurement on a GPU or TPU (the SAE benchmark).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from landscape.sites import BadInputError

# Widths from which `top_k(method="auto")` uses two stages on a GPU or TPU (never on a CPU).
TWO_STAGE_MIN_WIDTH = 16384
# The smallest chunk `default_chunk_size` picks; chunks are also at least 8 k wide.
MIN_CHUNK_SIZE = 4096

METHODS = ("auto", "plain", "two_stage")


def default_chunk_size(k: int) -> int:
  """The chunk width two-stage top-k uses for ``k``: a power of two >= max(MIN_CHUNK_SIZE, 8 k)."""
  return max(MIN_CHUNK_SIZE, 1 << int(np.ceil(np.log2(max(8 * k, 1)))))


def _lowest(dtype: jnp.dtype):
  if jnp.issubdtype(dtype, jnp.floating):
    return -jnp.inf
  if jnp.issubdtype(dtype, jnp.integer):
    return jnp.iinfo(dtype).min
  raise BadInputError(f"top_k: operand of dtype {dtype} is neither floating nor integer")


def two_stage_top_k(operand: jax.Array, k: int, *, chunk_size: int | None = None
                    ) -> tuple[jax.Array, jax.Array]:
  """`jax.lax.top_k` over the last axis, computed as a top k per chunk and one over the candidates.

  Args:
    operand: (..., F), floating or integer.
    k: static, 1 <= k <= F.
    chunk_size: the width of each chunk (>= k); `default_chunk_size(k)` when None. A last axis
      that is not a multiple of it is padded with the dtype's lowest value at the end, which loses
      every tie to a real element (padding has the higher index) and is never returned when k <= F.

  Returns:
    (values (..., k), indices (..., k) int32), identical to ``jax.lax.top_k(operand, k)``.
  """
  operand = jnp.asarray(operand)
  width = operand.shape[-1]
  chunk_size = default_chunk_size(k) if chunk_size is None else int(chunk_size)
  if not 1 <= k <= width:
    raise BadInputError(f"top_k: k={k} must be in [1, {width}] for an operand of shape "
                        f"{operand.shape}")
  if chunk_size < k:
    raise BadInputError(f"two_stage_top_k: chunk_size={chunk_size} is smaller than k={k}")
  if width <= chunk_size:
    return jax.lax.top_k(operand, k)
  num_chunks = -(-width // chunk_size)
  padding = num_chunks * chunk_size - width
  if padding:
    operand = jnp.pad(operand, [(0, 0)] * (operand.ndim - 1) + [(0, padding)],
                      constant_values=_lowest(operand.dtype))
  lead = operand.shape[:-1]
  chunked = operand.reshape(lead + (num_chunks, chunk_size))
  chunk_values, chunk_indices = jax.lax.top_k(chunked, k)
  offsets = (jnp.arange(num_chunks, dtype=jnp.int32) * chunk_size).reshape(
      (1,) * len(lead) + (num_chunks, 1))
  candidate_values = chunk_values.reshape(lead + (num_chunks * k,))
  candidate_indices = (chunk_indices + offsets).reshape(lead + (num_chunks * k,))
  values, positions = jax.lax.top_k(candidate_values, k)
  return values, jnp.take_along_axis(candidate_indices, positions, axis=-1)


def uses_two_stages(width: int, k: int, *, backend: str | None = None) -> bool:
  """Whether `top_k(method="auto")` takes two stages for this width and k on ``backend``
  (the default backend when None): never on a CPU; elsewhere from `TWO_STAGE_MIN_WIDTH` on, when
  the candidates number at most a quarter of the width."""
  backend = jax.default_backend() if backend is None else backend
  if backend == "cpu" or width < TWO_STAGE_MIN_WIDTH:
    return False
  chunk_size = default_chunk_size(k)
  return -(-width // chunk_size) * k * 4 <= width


def top_k(operand: jax.Array, k: int, *, method: str = "auto", chunk_size: int | None = None
          ) -> tuple[jax.Array, jax.Array]:
  """The top ``k`` values of the last axis and their int32 indices, as `jax.lax.top_k` gives them
  (descending; the lower index first among equal values), by the method that is faster here.

  ``method``: "plain" (`jax.lax.top_k`), "two_stage" (`two_stage_top_k`) or "auto"
  (`uses_two_stages` decides from the width, k and the default backend).
  """
  if method not in METHODS:
    raise BadInputError(f"top_k: method={method!r}; expected one of {METHODS}")
  width = jnp.shape(operand)[-1]
  if method == "auto":
    method = "two_stage" if uses_two_stages(width, k) else "plain"
  if method == "two_stage":
    return two_stage_top_k(operand, k, chunk_size=chunk_size)
  if not 1 <= k <= width:
    raise BadInputError(f"top_k: k={k} must be in [1, {width}] for an operand of shape "
                        f"{jnp.shape(operand)}")
  return jax.lax.top_k(operand, k)
