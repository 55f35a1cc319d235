"""One entry point for the compiled chunk under either parallelism ("jit" or "pmap")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optax
from jax.sharding import Mesh

from landscape.data import Dataset
from landscape.models import Model
from landscape.objectives import Objective
from landscape.training._chunk import ChunkRunner
from landscape.training._chunk import JitChunk
from landscape.training._pmap import PmapChunk
from landscape.training._state import Refresher
from landscape.training._step import ExtraArgsFn
from landscape.training._step import make_train_step

PMAP_AXIS = "data"


def compile_chunk(*, model: Model, objective: Objective,
                  optimizer: optax.GradientTransformationExtraArgs, dataset: Dataset,
                  batch_size: int, mesh: Mesh, shardings: Any, refreshers: Sequence[Refresher] = (),
                  optimizer_extra_args: ExtraArgsFn | None = None,
                  parallelism: str = "jit") -> ChunkRunner:
  """The `ChunkRunner` of ``parallelism`` ("jit" or "pmap") for these pieces.

  ``mesh`` and ``shardings`` (see `state_shardings`) place the state. Under pmap the mesh's devices
  are the pmap's: each holds every run and a slice of each batch, gradients averaged over them.
  """
  train_step = make_train_step(model=model, objective=objective, optimizer=optimizer,
                               refreshers=refreshers, optimizer_extra_args=optimizer_extra_args,
                               axis_name=PMAP_AXIS if parallelism == "pmap" else None)
  if parallelism == "pmap":
    return PmapChunk(train_step, dataset, batch_size, devices=list(mesh.devices.flat),
                     shardings=shardings, axis_name=PMAP_AXIS)
  return JitChunk(train_step, dataset, batch_size, mesh=mesh, shardings=shardings)
