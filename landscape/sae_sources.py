"""SAE activation sources that need a model or a dataset: a site of a model run over a dataset
(through a shuffling buffer of bounded size), and arrays a researcher already has.

They build `landscape.sae.ActivationSource` values, like the planted dictionary's
(`landscape.sae.planted_source`); they sit above ``landscape.sae``, which imports neither models
nor data.

The model source's buffer is the mixing buffer of SAELens: it holds ``buffer_size`` activations;
when the half it serves from runs out, ``buffer_size / 2`` fresh activations join the half it
kept, the whole buffer is shuffled, one half is served batch by batch and the other kept.
Activations of one model batch (correlated: one sequence's tokens, one image's) are so spread over
many SAE batches, in memory bounded by ``buffer_size x D``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape.data import Dataset
from landscape.data import permuted_indices
from landscape.models import Model
from landscape.sae import ActivationSource
from landscape.sae import downstream_metrics
from landscape.sae import model_logits_with
from landscape.sae._sources import _check_batch_size
from landscape.sae._sources import _no_state
from landscape.sae._sources import site_rows
from landscape.sites import BadInputError


def array_source(acts: np.ndarray | jax.Array, *, batch_size: int,
                 eval_acts: np.ndarray | jax.Array | None = None, num_eval: int | None = None,
                 name: str = "arrays") -> ActivationSource:
  """Activations a researcher already has, (N, D) (any leading axes are flattened), reshuffled
  every epoch: step t of epoch e = t // (N // B) takes positions [(t mod (N // B)) B, + B) of a
  pseudo-random permutation from ``fold_in(key, e)`` (as `landscape.data.array_dataset`).

  The evaluation set is ``eval_acts`` when given; otherwise the last ``num_eval`` rows (default:
  a tenth, at most 20,000), which are then held out of training.
  """
  _check_batch_size(batch_size, f"array_source {name!r}")
  rows = np.asarray(acts, np.float32)
  if rows.ndim < 2 or not np.all(np.isfinite(rows)):
    raise BadInputError(f"array_source {name!r}: activations of shape {rows.shape} must be "
                        "(..., N, D) with finite entries")
  rows = rows.reshape(-1, rows.shape[-1])
  if eval_acts is None:
    num_eval = min(rows.shape[0] // 10, 20_000) if num_eval is None else int(num_eval)
    if not 1 <= num_eval < rows.shape[0]:
      raise BadInputError(f"array_source {name!r}: num_eval={num_eval} must be in [1, N) for "
                          f"{rows.shape[0]} rows")
    rows, held_out = rows[:-num_eval], rows[-num_eval:]
  else:
    held_out = np.asarray(eval_acts, np.float32).reshape(-1, np.shape(eval_acts)[-1])
    if held_out.shape[-1] != rows.shape[-1] or held_out.shape[0] < 1:
      raise BadInputError(f"array_source {name!r}: eval_acts of shape {np.shape(eval_acts)} for "
                          f"activations of width {rows.shape[-1]}")
  num_rows = rows.shape[0]
  if batch_size > num_rows:
    raise BadInputError(f"array_source {name!r}: batch_size={batch_size} > {num_rows} training "
                        "rows")
  steps_per_epoch = num_rows // batch_size

  def next_batch(arrays, state, key, step):
    epoch, position = jnp.divmod(jnp.asarray(step, jnp.int32), steps_per_epoch)
    positions = position * batch_size + jnp.arange(batch_size)
    indices = permuted_indices(positions, num_rows, jax.random.fold_in(key, epoch))
    return jnp.take(arrays["acts"], indices, axis=0), state

  def collect(arrays, key, count):
    return jnp.take(arrays["acts"], jax.random.randint(key, (count,), 0, num_rows), axis=0)

  return ActivationSource(
      name=name, d_in=rows.shape[1], batch_size=int(batch_size), arrays={"acts": rows},
      init=_no_state, next=next_batch, collect=collect, eval_acts=held_out,
      info=dict(source="arrays", name=name, num_train=num_rows, eval_size=held_out.shape[0]))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BufferState:
  """The mixing buffer: ``served`` (H, D), read batch by batch, and ``kept`` (H, D), mixed into the
  next refill (H = buffer_size / 2)."""

  served: jax.Array
  kept: jax.Array


def model_source(model: Model, params: Any, *, site: str, dataset: Dataset, batch_size: int,
                 buffer_size: int, model_batch_size: int, eval_set: str | None = None,
                 eval_size: int | None = None, position: int | None = None,
                 logits_of: Callable[[Any], jax.Array] | None = None) -> ActivationSource:
  """The activations at ``site`` of ``model`` with ``params``, run over ``dataset``'s training
  stream, shuffled through a mixing buffer of ``buffer_size`` rows (see the module docstring).

  Args:
    model, params: a landscape `Model` and its parameters (from a checkpoint or initialisation).
    site: the site read; its activation (B, ..., D) gives every position as a row (or only
      ``position`` of axis 1 of a sequence site).
    dataset: its sampler gives ``inputs`` (and ``labels``, with ``label_mask`` as weights when
      present, for the downstream metrics); model batch j of the stream is ``dataset.sample(arrays,
      key, j, model_batch_size)``.
    batch_size: SAE batch rows; ``buffer_size / 2`` must be a multiple of it.
    buffer_size: rows held (two halves).
    model_batch_size: examples per forward pass while refilling.
    eval_set: the dataset's evaluation set whose activations evaluate the SAE (its first when
      None), at most ``eval_size`` examples of it; its inputs and labels also give the CE and KL
      recovered (`ActivationSource.downstream`).
    logits_of: outputs -> logits for the downstream metrics (the outputs themselves by default).

  Raises (before anything is compiled):
    UnknownSiteError: a site the model lacks. BadInputError: sizes that do not fit.
  """
  model.check_sites([site], what="model_source")
  _check_batch_size(batch_size, "model_source")
  for field, value in (("buffer_size", buffer_size), ("model_batch_size", model_batch_size)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise BadInputError(f"model_source: {field}={value!r} must be an int >= 1")
  half = buffer_size // 2
  if buffer_size % 2 or half % batch_size:
    raise BadInputError(f"model_source: buffer_size={buffer_size} must be even with half a "
                        f"multiple of batch_size={batch_size}")
  eval_set = next(iter(dataset.eval_sets)) if eval_set is None else eval_set
  if eval_set not in dataset.eval_sets:
    raise BadInputError(f"model_source: eval_set={eval_set!r}; dataset {dataset.name!r} has "
                        f"{sorted(dataset.eval_sets)}")
  example = dataset.example_batch(model_batch_size)
  shapes = model.site_shapes(params, example["inputs"])
  rows_of = lambda act: site_rows(act, site, position, what="model_source")
  rows_per_batch = int(np.prod(jax.eval_shape(rows_of, shapes[site]).shape[:-1]))
  d_in = int(shapes[site].shape[-1])
  batches_per_fill = -(-half // rows_per_batch)
  steps_per_refill = half // batch_size
  arrays = {"params": params, "data": dataset.arrays}

  def rows_from(arrays, data_key, first_step, count_batches, count_rows):
    def one(data_step):
      batch = dataset.sample(arrays["data"], data_key, data_step, model_batch_size)
      _, acts = model.forward(arrays["params"], batch["inputs"], capture=[site])
      return rows_of(acts[site])

    steps = first_step + jnp.arange(count_batches, dtype=jnp.int32)
    return jax.lax.map(one, steps).reshape(-1, d_in)[:count_rows]

  def stream_key(key):
    return jax.random.fold_in(key, 0)

  def init(arrays, key):
    kept = rows_from(arrays, stream_key(key), jnp.zeros((), jnp.int32), batches_per_fill, half)
    return BufferState(served=jnp.zeros_like(kept), kept=kept)

  def next_batch(arrays, state, key, step):
    step = jnp.asarray(step, jnp.int32)
    refill_index, position_in_half = jnp.divmod(step, steps_per_refill)

    def refill():
      fresh = rows_from(arrays, stream_key(key), (refill_index + 1) * batches_per_fill,
                        batches_per_fill, half)
      pool = jnp.concatenate([state.kept, fresh], axis=0)
      order = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, 1), refill_index),
                                     2 * half)
      pool = jnp.take(pool, order, axis=0)
      return BufferState(served=pool[:half], kept=pool[half:])

    state = jax.lax.cond(position_in_half == 0, refill, lambda: state)
    batch = jax.lax.dynamic_slice_in_dim(state.served, position_in_half * batch_size, batch_size)
    return batch, state

  def collect(arrays, key, count):
    return rows_from(arrays, jax.random.fold_in(key, 2), jnp.zeros((), jnp.int32),
                     -(-count // rows_per_batch), count)

  eval_batch = dict(dataset.eval_sets[eval_set])
  if eval_size is not None:
    eval_batch = {field: np.asarray(value)[:eval_size] for field, value in eval_batch.items()}
  _, captured = jax.jit(lambda p, x: model.forward(p, x, capture=[site]))(
      params, jnp.asarray(eval_batch["inputs"]))
  eval_acts = np.asarray(rows_of(captured[site]))

  downstream = None
  if "labels" in eval_batch:
    logits_with = model_logits_with(model, params, jnp.asarray(eval_batch["inputs"]), site=site,
                                    logits_of=logits_of)
    labels = jnp.asarray(eval_batch["labels"])
    weights = eval_batch.get("label_mask")
    weights = None if weights is None else jnp.asarray(weights)

    def downstream(reconstruct):
      return downstream_metrics(logits_with, labels, reconstruct, weights=weights)

  return ActivationSource(
      name=f"{model.name}:{site}", d_in=d_in, batch_size=int(batch_size), arrays=arrays, init=init,
      next=next_batch, collect=collect, eval_acts=eval_acts, downstream=downstream,
      info=dict(source="model", model=model.name, site=site, dataset=dataset.name,
                buffer_size=int(buffer_size), model_batch_size=int(model_batch_size),
                rows_per_model_batch=rows_per_batch, eval_set=eval_set,
                eval_size=int(eval_acts.shape[0]), position=position))
