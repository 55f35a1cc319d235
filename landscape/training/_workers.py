"""Independent jobs (the arms of a study, say) in worker processes on one CPU machine.

On a CPU, XLA compiles a program on one core, and a small model's step keeps little more than one
busy: a study of many arms, each its own compiled program, leaves the other cores idle. `run_jobs`
runs independent jobs in spawned worker processes, each set up as this one is (the JAX settings
that decide what is compiled, cached and computed; absl's verbosity; `keep_freed_memory`), so a
job computes exactly what it would compute here. On a GPU or TPU, and in a multi-process run, jobs
run here one after another: one process owns the accelerator.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import math
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
from absl import flags
from absl import logging

from landscape.training._config import ConfigError
from landscape.training._loop import Preempted

Job = TypeVar("Job")

# The JAX settings a worker copies from the process that starts it.
JAX_SETTINGS = (
    "jax_compilation_cache_dir", "jax_enable_compilation_cache",
    "jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes",
    "jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_rank_promotion",
    "jax_default_prng_impl", "jax_threefry_partitionable", "jax_platforms")
MAX_DEFAULT_WORKERS = 4


def _in_a_worker() -> bool:
  return multiprocessing.parent_process() is not None


# Where a container's CPU quota is (cgroup v2, then v1): a quota of Q microseconds per period of P
# lets the processes use Q / P cores, however many the machine shows.
CGROUP_V2_CPU_MAX = "/sys/fs/cgroup/cpu.max"
CGROUP_V1_CPU_QUOTA = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _read(path: str) -> str | None:
  try:
    with open(path) as handle:
      return handle.read().strip()
  except OSError:
    return None


def _quota_cores() -> float | None:
  """The cores a cgroup CPU quota allows (a fraction allowed), or None where there is none."""
  v2 = _read(CGROUP_V2_CPU_MAX)
  if v2 is not None:
    quota, _, period = v2.partition(" ")
    fields = (quota, period or "100000")
  else:
    fields = tuple(_read(path) for path in CGROUP_V1_CPU_QUOTA)
  try:
    quota, period = float(fields[0]), float(fields[1])
  except (TypeError, ValueError):  # "max", a missing file: no quota
    return None
  return quota / period if quota > 0 and period > 0 else None


def usable_cores() -> int:
  """The cores this process may use: its CPU affinity (the machine's count where there is none, as
  on macOS), fewer where a container's CPU quota allows fewer (rounded up)."""
  cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
           else os.cpu_count() or 1)
  quota = _quota_cores()
  if quota is not None:
    cores = min(cores, math.ceil(quota))
  return max(1, cores)


def default_workers() -> int:
  """The worker processes `run_jobs` uses for ``workers=0``: `usable_cores`, at most
  `MAX_DEFAULT_WORKERS`, on a single-process CPU backend; 1 on a GPU or TPU, across processes,
  and inside a worker (jobs of a job run one after another). A CPU quota counts: on a runner
  limited to 2 of 64 cores, more workers than 2 would only take turns."""
  if jax.default_backend() != "cpu" or jax.process_count() > 1 or _in_a_worker():
    return 1
  return min(usable_cores(), MAX_DEFAULT_WORKERS)


def resolve_workers(workers: int, *, field: str = "config.workers") -> int:
  """``workers`` (0: `default_workers`), checked; more than one only where it is safe."""
  if not isinstance(workers, int) or workers < 0:
    raise ConfigError(f"{field}={workers!r}: give 0 (as many as the CPU's cores, at most "
                      f"{MAX_DEFAULT_WORKERS}) or a number of worker processes >= 1")
  if workers == 0 or _in_a_worker():
    return default_workers()
  if workers > 1 and (jax.default_backend() != "cpu" or jax.process_count() > 1):
    logging.warning("%s=%d: one process owns a %s backend (or joins a multi-process run); running "
                    "the jobs one after another", field, workers, jax.default_backend())
    return 1
  return workers


_keeping_freed_memory = False
# glibc's mallopt parameters (malloc.h); 1 GiB: blocks below it come from the heap, which keeps them.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _KEEP_BYTES = -1, -3, 1 << 30


def keep_freed_memory() -> bool:
  """Has this process's C allocator keep freed memory for reuse; True where it could (glibc).

  XLA's CPU runtime allocates and frees its buffers at every call. glibc returns freed blocks
  above its thresholds to the operating system, and the next call faults their pages in again:
  about 7% of the CPU time of the flagship's arms on a 2-core machine (BENCHMARKS.md). The price
  is that the process keeps its peak memory. The binaries call it at start-up; `run_jobs`'s workers
  do when the process that starts them did. A no-op (False) where the C library is not glibc.
  """
  global _keeping_freed_memory
  try:
    libc = ctypes.CDLL("libc.so.6")
    done = bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) and
                libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
  except (OSError, AttributeError):
    done = False
  _keeping_freed_memory = _keeping_freed_memory or done
  return done


def _settings() -> dict[str, Any]:
  return {name: getattr(jax.config, name) for name in JAX_SETTINGS if name in jax.config.values}


def _start_worker(settings: dict[str, Any], verbosity: int, keeps_freed_memory: bool,
                  setup: Callable[[], None] | None) -> None:
  if keeps_freed_memory:
    keep_freed_memory()
  for name, value in settings.items():
    jax.config.update(name, value)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # a worker has no command line; absl would warn at its first line
  logging.use_absl_handler()  # the log lines look like this process's
  logging.set_verbosity(verbosity)
  if setup is not None:
    setup()


def run_jobs(fn: Callable[[Job], Any], jobs: Sequence[Job], *, workers: int,
             setup: Callable[[], None] | None = None) -> list[Any]:
  """``[fn(job) for job in jobs]``, in ``workers`` processes when ``workers`` > 1.

  ``fn``, each job and ``setup`` (called in every worker after its JAX settings, say to filter a
  library's logs) must pickle: module-level functions, `functools.partial` of them, plain values.
  Jobs start in the order given (put the longest first). The first job to fail stops the others
  from starting, and its exception is raised here once the running ones have finished (a bug in a
  worker keeps its traceback, chained). SIGTERM sent to this process is passed on to the workers:
  a training loop checkpoints and stops, a worker doing anything else stops at once, and this
  raises `Preempted` (running the same jobs again resumes them).
  """
  if workers <= 1 or len(jobs) <= 1:
    return [fn(job) for job in jobs]
  pool = concurrent.futures.ProcessPoolExecutor(
      max_workers=min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
      initializer=_start_worker,
      initargs=(_settings(), logging.get_verbosity(), _keeping_freed_memory, setup))

  sigterm = threading.Event()

  def forward_sigterm(signum, frame):
    del frame
    sigterm.set()
    for process in list(getattr(pool, "_processes", {}).values()):  # the executor's own workers
      if process.is_alive():
        os.kill(process.pid, signum)

  previous = signal.getsignal(signal.SIGTERM)
  forwarding = threading.current_thread() is threading.main_thread()  # where signals go
  try:
    if forwarding:
      signal.signal(signal.SIGTERM, forward_sigterm)
    futures = [pool.submit(fn, job) for job in jobs]
    concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
    failed = [future for future in futures if future.done() and future.exception() is not None]
    if failed:
      for future in futures:
        future.cancel()
      concurrent.futures.wait(futures)
      if sigterm.is_set():
        raise Preempted("SIGTERM: the workers' training loops checkpointed; run the same command "
                        "to resume") from failed[0].exception()
      raise failed[0].exception()
    return [future.result() for future in futures]
  finally:
    pool.shutdown(wait=True, cancel_futures=True)
    if forwarding:
      signal.signal(signal.SIGTERM, previous)
