"""The chunk under `jax.pmap`: every device holds every run and a slice of each batch.

The gradients (and metrics) are averaged over the devices inside the step (`make_train_step`'s
``axis_name``), so each device applies the same update to its copy of the state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from landscape.data import Dataset
from landscape.training import _sharding
from landscape.training._chunk import StepFn
from landscape.training._chunk import _CompiledChunk
from landscape.training._chunk import make_chunk
from landscape.training._state import TrainState


class PmapChunk(_CompiledChunk):
  """A `ChunkRunner` over ``devices`` with `jax.pmap`; ``train_step`` pmeans over ``axis_name``."""

  def __init__(self, train_step: StepFn, dataset: Dataset, batch_size: int, *,
               devices: Sequence[jax.Device], shardings: Any, axis_name: str):
    self._num_devices = len(devices)
    self._shardings = shardings
    per_device = batch_size // self._num_devices

    def device_slice(batch):
      """This device's share: (runs, batch_size, ...) -> (runs, per_device, ...)."""
      offset = jax.lax.axis_index(axis_name) * per_device
      return jax.tree_util.tree_map(
          lambda x: jax.lax.dynamic_slice_in_dim(x, offset, per_device, axis=1), batch)

    chunk = make_chunk(train_step, dataset, batch_size, shape_batch=device_slice)
    self._program = jax.pmap(chunk, axis_name=axis_name, in_axes=(0, None, None),
                             static_broadcasted_argnums=(2,), devices=list(devices))
    self._arrays = _sharding.fetch(dataset.arrays)
    self._precompiled: dict[int, Any] = {}

  def place(self, state: TrainState) -> TrainState:
    return _sharding.replicate_for_pmap(state, self._num_devices)

  def run(self, state: TrainState, num_steps: int) -> tuple[TrainState, dict[str, jax.Array]]:
    state, metrics = self._call(state, num_steps)
    return state, _sharding.first_replica(metrics)

  def host_view(self, state: TrainState) -> TrainState:
    return jax.device_put(_sharding.first_replica(state), self._shardings)
