"""The compiled chunk: N steps of every run trained together, the batches sampled inside.

``chunk(state, arrays, num_steps) -> (state, metrics)`` scans ``num_steps`` steps; at each, every
run's batch is drawn from the dataset's ``arrays`` with the run's data key, its hyper-parameters and
the shared step, and the train step is vmapped over the runs with the step left unbatched
(`STATE_AXES`). Metrics come back as (num_steps, runs, ...).

`compile_chunk` (in ``_parallelism.py``) wraps it for a parallelism behind one interface,
`ChunkRunner`: `JitChunk` here (`jax.jit` with NamedShardings over a mesh), `PmapChunk` in
``_pmap.py``. The training loop and the benchmark run the same runner, so the benchmark times the
loop's own code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
from jax.sharding import Mesh

from landscape.data import Dataset
from landscape.training import _sharding
from landscape.training._state import STATE_AXES
from landscape.training._state import TrainState

StepFn = Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]
ChunkFn = Callable[[TrainState, Any, int], tuple[TrainState, dict[str, jax.Array]]]


def make_chunk(train_step: StepFn, dataset: Dataset, batch_size: int, *,
               shape_batch: Callable[[Any], Any] = lambda batch: batch) -> ChunkFn:
  """``chunk(state, arrays, num_steps)`` over a run-stacked ``state`` (see the module docstring).

  ``shape_batch`` maps the runs' batches (runs, batch_size, ...) before the step: a sharding
  constraint under jit, each device's slice under pmap.
  """
  runs_step = jax.vmap(train_step, in_axes=(STATE_AXES, 0), out_axes=(STATE_AXES, 0))

  def chunk(state: TrainState, arrays: Any, num_steps: int):
    def one_step(state, _):
      batch = jax.vmap(lambda key, hparams: dataset.sample(arrays, key, state.step, batch_size,
                                                           hparams))(state.data_key, state.hparams)
      return runs_step(state, shape_batch(batch))

    return jax.lax.scan(one_step, state, length=num_steps)

  return chunk


class ChunkRunner(Protocol):
  """One parallelism's way of running chunks; the loop and the benchmark use only this.

  place(state): a run-stacked state (host or device arrays) as this runner holds it.
  run(state, num_steps): ``num_steps`` steps of every run -> (state as held, metrics with leading
    axes (num_steps, runs)). The first call for a ``num_steps`` compiles.
  host_view(state): the held state as a run-stacked state sharded over the mesh (to evaluate,
    checkpoint or return).
  precompile(state, num_steps): compiles the chunk of ``num_steps`` steps for a held state like
    ``state`` without running it (a benchmark's timed calls then compile nothing).
  lower(state, num_steps): the chunk's program for a held state like ``state`` (arrays or their
    shapes), as JAX lowers it, compiling nothing: runners whose lowered texts are equal share one
    compiled program through JAX's compilation cache.
  """

  def place(self, state: TrainState) -> Any:
    ...

  def precompile(self, state: Any, num_steps: int) -> None:
    ...

  def run(self, state: Any, num_steps: int) -> tuple[Any, dict[str, jax.Array]]:
    ...

  def lower(self, state: Any, num_steps: int) -> Any:
    ...

  def host_view(self, state: Any) -> TrainState:
    ...


class _CompiledChunk:
  """What both runners share: ``self._program`` (the jitted or pmapped chunk, its step count a
  static argument) over ``self._arrays``, each step count compiled once, ahead of time or at its
  first call."""

  _program: Any
  _arrays: Any
  _precompiled: dict[int, Any]

  def lower(self, state: Any, num_steps: int) -> Any:
    return self._program.lower(state, self._arrays, num_steps)

  def precompile(self, state: Any, num_steps: int) -> None:
    self._precompiled[num_steps] = self.lower(state, num_steps).compile()

  def _call(self, state: Any, num_steps: int) -> tuple[Any, dict[str, jax.Array]]:
    if num_steps in self._precompiled:
      return self._precompiled[num_steps](state, self._arrays)
    return self._program(state, self._arrays, num_steps)


class JitChunk(_CompiledChunk):
  """The chunk under `jax.jit`: the state sharded by ``shardings``, batches on ("seed", "data")."""

  def __init__(self, train_step: StepFn, dataset: Dataset, batch_size: int, *, mesh: Mesh,
               shardings: Any):
    self._shardings = shardings
    self._arrays = jax.device_put(dataset.arrays, _sharding.replicated(mesh))
    data_sharding = _sharding.batch_sharding(mesh)
    chunk = make_chunk(train_step, dataset, batch_size,
                       shape_batch=lambda batch: jax.lax.with_sharding_constraint(batch,
                                                                                  data_sharding))
    # Not on CPU: there an asynchronous checkpoint may still read the buffers a donation frees.
    donate = () if jax.default_backend() == "cpu" else (0,)
    self._program = jax.jit(chunk, static_argnums=(2,), donate_argnums=donate,
                            out_shardings=(shardings, None),
                            compiler_options=_sharding.compiler_options())
    self._precompiled: dict[int, Any] = {}

  def place(self, state: TrainState) -> TrainState:
    return jax.device_put(state, self._shardings)

  def run(self, state: TrainState, num_steps: int) -> tuple[TrainState, dict[str, jax.Array]]:
    return self._call(state, num_steps)

  def host_view(self, state: TrainState) -> TrainState:
    return state
