"""The loop's configuration fields, and the checks that run before anything is compiled."""

from __future__ import annotations

import math
from collections.abc import Iterable

import jax
import ml_collections
from landscape.sites import BadInputError

PARALLELISM = ("jit", "pmap")


class ConfigError(BadInputError):
  """A configuration value that cannot work; the message names the field and the value."""


def loop_config() -> ml_collections.ConfigDict:
  """The fields every training binary shares; experiment configs add their own beside them."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_seeds = 1            # runs trained together in one program, seeds seed..seed+S-1
  config.steps = 1000
  config.batch_size = 128
  config.log_every = 50
  config.eval_every = 250         # 0: evaluate at the end only
  # Comma-separated eval sets evaluated before the last step ("": every set); the last evaluation
  # always evaluates every set. Naming the sets a run watches over training saves the evaluations'
  # cost where the eval sets are large against the training batches.
  config.interim_eval_sets = ""
  config.eval_batch_size = 512
  config.checkpoint_every = 500   # 0: checkpoint at the end (and on SIGTERM) only
  config.max_to_keep = 2
  config.async_checkpoints = True
  config.steps_per_call = 50      # steps compiled into one call; metrics are fetched once per call
  config.parallelism = "jit"      # "jit" (NamedSharding over a Mesh) or "pmap"
  config.tensorboard = True

  config.mesh = ml_collections.ConfigDict()
  config.mesh.num_devices = -1    # -1: every device
  config.mesh.seed = 0            # devices along the run axis; 0: gcd(num_seeds, num_devices)
  config.mesh.model = 1           # devices along the model axis (parameters sharded by rule)

  config.distributed = ml_collections.ConfigDict()
  config.distributed.enabled = False   # call jax.distributed.initialize before anything else
  config.distributed.coordinator_address = ""   # HOST:PORT of process 0; empty: let JAX detect it
  config.distributed.coordinator_bind_address = ""   # process 0 listens here; empty: all interfaces
  config.distributed.num_processes = 0          # 0: detect
  config.distributed.process_id = -1            # -1: detect
  # Seconds. A process silent for heartbeat_timeout_seconds counts as dead: every other process then
  # stops with an error naming it, instead of waiting forever in a collective.
  config.distributed.initialization_timeout_seconds = 300
  config.distributed.heartbeat_timeout_seconds = 100
  config.distributed.shutdown_timeout_seconds = 300
  config.distributed.cpu_collectives = "gloo"   # across processes on CPU: "gloo" (TCP) or "mpi"
  config.distributed.cpu_collectives_hostname = ""   # gloo's address; empty: what the host name is
  return config


CPU_COLLECTIVES = ("gloo", "mpi")


def _check_address(field: str, address: str) -> None:
  host, colon, port = address.rpartition(":")
  if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
    _fail(field, address, "expected HOST:PORT with a port in 1-65535")


def check_distributed_config(config: ml_collections.ConfigDict) -> None:
  """Checks ``config.distributed`` before anything connects; ConfigError names the field."""
  settings = config.distributed
  if not settings.enabled:
    for field in ("coordinator_address", "num_processes", "process_id"):
      if settings[field] != loop_config().distributed[field]:
        _fail(f"distributed.{field}", settings[field],
              "has no effect unless config.distributed.enabled=True")
    return
  for field in ("coordinator_address", "coordinator_bind_address"):
    if settings[field]:
      _check_address(f"distributed.{field}", settings[field])
  check_positive(config, [f"distributed.{field}_timeout_seconds"
                          for field in ("initialization", "heartbeat", "shutdown")])
  check_positive(config, ["distributed.num_processes"], allow_zero=("distributed.num_processes",))
  if settings.process_id < -1:
    _fail("distributed.process_id", settings.process_id, "must be >= 0, or -1 to detect it")
  if settings.num_processes and settings.process_id >= settings.num_processes:
    _fail("distributed.process_id", settings.process_id,
          f"must be below config.distributed.num_processes={settings.num_processes}")
  if settings.cpu_collectives not in CPU_COLLECTIVES:
    _fail("distributed.cpu_collectives", settings.cpu_collectives,
          f"expected one of {CPU_COLLECTIVES}")
  if settings.cpu_collectives_hostname and settings.cpu_collectives != "gloo":
    _fail("distributed.cpu_collectives_hostname", settings.cpu_collectives_hostname,
          "applies to config.distributed.cpu_collectives='gloo' only")


def _fail(field: str, value, why: str):
  raise ConfigError(f"config.{field}={value!r}: {why}")


def check_positive(config: ml_collections.ConfigDict, fields: Iterable[str], *, allow_zero=()) -> None:
  """Raises ConfigError for any dotted ``fields`` that is not > 0 (or >= 0 for ``allow_zero``)."""
  for field in fields:
    value = config
    for part in field.split("."):
      value = value[part]
    if field in allow_zero:
      if value < 0:
        _fail(field, value, "must be >= 0")
    elif not value > 0:
      _fail(field, value, "must be > 0")


def _num_devices(config: ml_collections.ConfigDict, num_available: int | None = None) -> int:
  num_available = jax.device_count() if num_available is None else num_available
  num_devices = num_available if config.mesh.num_devices == -1 else config.mesh.num_devices
  if not 1 <= num_devices <= num_available:
    _fail("mesh.num_devices", config.mesh.num_devices,
          f"{num_available} device(s) available ({jax.default_backend()})")
  return num_devices


def mesh_shape(config: ml_collections.ConfigDict, num_available: int | None = None, *,
               num_runs: int | None = None) -> dict[str, int]:
  """{"seed", "data", "model"} axis sizes for this config, or ConfigError naming the field at fault.

  ``num_runs`` is the length of the run axis: ``num_seeds`` times the number of grid points trained
  together (``num_seeds`` when None).
  """
  num_runs = config.num_seeds if num_runs is None else num_runs
  num_devices = _num_devices(config, num_available)
  model = config.mesh.model
  if model < 1 or num_devices % model:
    _fail("mesh.model", model, f"must be >= 1 and divide mesh.num_devices={num_devices}")
  seed = config.mesh.seed or math.gcd(num_runs, num_devices // model)
  if seed < 1 or (num_devices // model) % seed:
    _fail("mesh.seed", config.mesh.seed,
          f"must divide mesh.num_devices / mesh.model = {num_devices // model}")
  if num_runs % seed:
    grid = "" if num_runs == config.num_seeds else f" (times {num_runs // config.num_seeds} grid points)"
    _fail("num_seeds", config.num_seeds, f"{num_runs} runs{grid} must be a multiple of the mesh's "
          f"seed axis ({seed})")
  data = num_devices // (model * seed)
  if config.batch_size % data:
    _fail("batch_size", config.batch_size,
          f"must be divisible by the mesh's data axis ({data} = {num_devices} devices / "
          f"{seed} seed / {model} model)")
  return {"seed": seed, "data": data, "model": model}


def validate_loop_config(config: ml_collections.ConfigDict, *,
                         num_runs: int | None = None) -> dict[str, int]:
  """Checks the loop's fields; returns the mesh shape. Runs before any compilation."""
  check_positive(config, ["steps", "batch_size", "num_seeds", "log_every", "eval_batch_size",
                          "steps_per_call", "max_to_keep", "eval_every", "checkpoint_every"],
                 allow_zero=("eval_every", "checkpoint_every"))
  if config.parallelism not in PARALLELISM:
    _fail("parallelism", config.parallelism, f"expected one of {PARALLELISM}")
  if config.parallelism == "pmap":
    return _pmap_shape(config)
  return mesh_shape(config, num_runs=num_runs)


def _pmap_shape(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Under pmap every device holds all runs and a slice of each batch."""
  num_devices = _num_devices(config)
  if config.mesh.model != 1:
    _fail("mesh.model", config.mesh.model, "the pmap path shards data only; use parallelism='jit'")
  if config.batch_size % num_devices:
    _fail("batch_size", config.batch_size, f"must be divisible by {num_devices} devices under pmap")
  return {"seed": 1, "data": num_devices, "model": 1}
