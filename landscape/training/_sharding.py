"""Meshes, shardings and the multi-host plumbing: one code path for CPU, GPU, TPU and pods.

The default path is `jax.jit` with `NamedSharding` over a Mesh with axes ("seed", "data", "model"):
the run axis of the state and of every batch is split over "seed", the batch axis over "data", and
parameter dimensions over "model" where a rule says so (everything else, the runs' shared step among
it, is replicated). The pmap path replicates the state on every device and splits each batch over
them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from landscape.sites import path_string
from landscape.training._config import ConfigError
from landscape.training._config import check_distributed_config
from landscape.training._state import TrainState

MESH_AXES = ("seed", "data", "model")
# (regular expression searched in a leaf's "/"-joined path, partition of the leaf's own dimensions)
ParamRule = tuple[str, tuple[str | None, ...]]


# XLA's CPU backend spends much of a small model's compile time in LLVM's optimisation passes. At
# backend level 1 the flagship's training chunks compiled in 0.5-0.85 of the time at the same step
# time (BENCHMARKS.md); values agree with the default level's within float32 rounding, not always
# bitwise (code generation differs). Level 0 stepped 3x slower.
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def compiler_options() -> dict[str, int]:
  """XLA options for the loop's programs: `CPU_COMPILER_OPTIONS` on CPU; none on GPU and TPU."""
  return dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}


def initialize_distributed(config) -> None:
  """Joins this process to the others when ``config.distributed.enabled``; a no-op otherwise.

  Checks ``config.distributed`` first (ConfigError naming the field), then calls
  `jax.distributed.initialize` with its timeouts, before anything touches a device. Once joined,
  a process that stops sending heartbeats for ``heartbeat_timeout_seconds`` makes every other one
  stop with JAX's "another task died" error rather than wait in a collective forever. Calling it
  again in the same process does nothing.
  """
  check_distributed_config(config)
  settings = config.distributed
  if not settings.enabled or jax.distributed.is_initialized():
    return
  jax.config.update("jax_cpu_collectives_implementation", settings.cpu_collectives)
  if settings.cpu_collectives_hostname:
    # JAX has no public setting for the address gloo listens on (it takes the host name's): build
    # the CPU client the way JAX does, with gloo told the address.
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top

    def cpu_client():
      collectives = _jax.make_gloo_tcp_collectives(
          distributed_client=distributed.global_state.client,
          hostname=settings.cpu_collectives_hostname)
      return xla_bridge.make_cpu_client(collectives=collectives)

    xla_bridge.register_backend_factory("cpu", cpu_client, priority=0, fail_quietly=False)
  kwargs = {}
  if settings.coordinator_address:
    kwargs["coordinator_address"] = settings.coordinator_address
  if settings.coordinator_bind_address:
    kwargs["coordinator_bind_address"] = settings.coordinator_bind_address
  if settings.num_processes > 0:
    kwargs["num_processes"] = settings.num_processes
  if settings.process_id >= 0:
    kwargs["process_id"] = settings.process_id
  jax.distributed.initialize(initialization_timeout=settings.initialization_timeout_seconds,
                             heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds,
                             shutdown_timeout_seconds=settings.shutdown_timeout_seconds, **kwargs)


def make_mesh(shape: Mapping[str, int]) -> Mesh:
  """A mesh over the first seed*data*model devices, axes ("seed", "data", "model")."""
  sizes = tuple(shape[axis] for axis in MESH_AXES)
  devices = jax.devices()[:int(np.prod(sizes))]
  return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def leaf_spec(path: str, shape: tuple[int, ...], mesh: Mesh, rules: Sequence[ParamRule]) -> P:
  """The partition of one run-stacked leaf: "seed" on its leading axis, then the first matching rule."""
  for pattern, partition in rules:
    if re.search(pattern, path):
      if len(partition) != len(shape) - 1:
        raise ConfigError(f"sharding rule {pattern!r} -> {partition} does not fit leaf {path} of "
                          f"shape {shape[1:]}")
      for axis_name, size in zip(partition, shape[1:]):
        if axis_name is not None and size % mesh.shape[axis_name]:
          raise ConfigError(f"sharding rule {pattern!r}: leaf {path} dimension {size} is not divisible "
                            f"by mesh axis {axis_name!r} of size {mesh.shape[axis_name]}")
      return P("seed", *partition)
  return P("seed")


def state_shardings(state: Any, mesh: Mesh, rules: Sequence[ParamRule] = ()) -> Any:
  """NamedShardings for a run-stacked state (or its shapes); a `TrainState`'s step is replicated."""
  shared_step = isinstance(state, TrainState)
  shardings = jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, leaf_spec(path_string(path), leaf.shape, mesh, rules)),
      state.replace(step=None) if shared_step else state)
  return shardings.replace(step=replicated(mesh)) if shared_step else shardings


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are (runs, examples, ...): runs over "seed", examples over "data"."""
  return NamedSharding(mesh, P("seed", "data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fetch(tree: Any) -> Any:
  """Brings arrays to this host as NumPy, gathering shards held by other processes if need be."""

  def one(leaf):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(leaf)

  return jax.tree_util.tree_map(one, tree)


def replicate_for_pmap(tree: Any, num_devices: int) -> Any:
  """Adds a leading device axis: every device of the pmap holds the same copy."""
  return jax.tree_util.tree_map(
      lambda leaf: np.broadcast_to(np.asarray(leaf), (num_devices,) + np.shape(leaf)), fetch(tree))


def first_replica(tree: Any) -> Any:
  return jax.tree_util.tree_map(lambda leaf: leaf[0], tree)
