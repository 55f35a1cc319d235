"""Independent jobs in worker processes: the same values as here, settings copied, failures raised."""

import functools
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from landscape import training
from landscape.training import ConfigError
from landscape.training import _workers


def _train_a_little(seed: int) -> np.ndarray:
  """A small jitted computation whose float32 result depends on every step (a job)."""
  key = jax.random.PRNGKey(seed)
  x = jax.random.normal(key, (64, 16))
  w = jnp.zeros((16,))

  @jax.jit
  def steps(w):
    def one(w, _):
      grad = x.T @ jnp.tanh(x @ w - 1.0) / x.shape[0]
      return w - 0.3 * grad, None
    return jax.lax.scan(one, w, None, length=50)[0]

  return np.asarray(steps(w))


def _settings(job: int) -> tuple[int, str, str]:
  del job
  return (os.getpid(), str(jax.config.jax_numpy_rank_promotion),
          str(jax.config.jax_default_matmul_precision))


def _signal_the_parent_and_wait(rendezvous: str, job: int) -> bool:
  """In a worker: once both jobs handle SIGTERM, job 0 sends it to the process that started them;
  whether it came back to this one (forwarded)."""
  if multiprocessing.parent_process() is None:
    raise RuntimeError("not in a worker process")  # never signal a test runner's parent
  received = threading.Event()
  signal.signal(signal.SIGTERM, lambda signum, frame: received.set())
  open(os.path.join(rendezvous, str(job)), "w").close()
  deadline = time.monotonic() + 60
  while len(os.listdir(rendezvous)) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
  if job == 0:
    os.kill(os.getppid(), signal.SIGTERM)
  return received.wait(timeout=60)


def _signal_the_parent_unhandled(job: int) -> None:
  """In a worker, with SIGTERM's default action (what a worker outside a training loop has)."""
  if multiprocessing.parent_process() is None:
    raise RuntimeError("not in a worker process")
  if job == 0:
    os.kill(os.getppid(), signal.SIGTERM)
  time.sleep(60)


def _keeps_freed_memory(job: int) -> tuple[int, bool]:
  from landscape.training import _workers  # pylint: disable=g-import-not-at-top
  return job, _workers._keeping_freed_memory


def _fail_on(bad: int, job: int) -> int:
  if job == bad:
    raise ConfigError(f"config.job={job}: planted failure")
  return job


class RunJobsTest(absltest.TestCase):

  def test_workers_give_bitwise_what_this_process_gives(self):
    jobs = [0, 1, 2]
    here = training.run_jobs(_train_a_little, jobs, workers=1)
    there = training.run_jobs(_train_a_little, jobs, workers=2)
    self.assertLen(there, 3)
    for expected, got in zip(here, there):
      np.testing.assert_array_equal(got, expected)  # the same program: bitwise

  def test_workers_are_other_processes_with_this_ones_jax_settings(self):
    with jax.numpy_rank_promotion("raise"):
      jax.config.update("jax_default_matmul_precision", "highest")
      try:
        found = training.run_jobs(_settings, [0, 1], workers=2)
      finally:
        jax.config.update("jax_default_matmul_precision", None)
    self.assertNotIn(os.getpid(), [pid for pid, *_ in found])
    self.assertEqual([values for _, *values in found], [["raise", "highest"]] * 2)

  def test_workers_keep_freed_memory_when_this_process_does(self):
    if sys.platform != "linux":
      self.skipTest("keep_freed_memory sets glibc's malloc (Linux)")
    for keeps in (False, True):
      with mock.patch.object(_workers, "_keeping_freed_memory", keeps):
        self.assertEqual(training.run_jobs(_keeps_freed_memory, [0, 1], workers=2),
                         [(0, keeps), (1, keeps)])

  def test_a_failed_job_raises_its_error_and_the_others_still_return_nothing(self):
    with self.assertRaisesRegex(ConfigError, r"config.job=1: planted failure"):
      training.run_jobs(functools.partial(_fail_on, 1), [0, 1, 2, 3], workers=2)
    with self.assertRaisesRegex(ConfigError, r"config.job=1: planted failure"):
      training.run_jobs(functools.partial(_fail_on, 1), [0, 1, 2, 3], workers=1)

  def test_sigterm_to_this_process_reaches_every_worker(self):
    before = signal.getsignal(signal.SIGTERM)
    rendezvous = tempfile.mkdtemp()
    self.assertEqual(training.run_jobs(functools.partial(_signal_the_parent_and_wait, rendezvous),
                                       [0, 1], workers=2), [True, True])
    self.assertIs(signal.getsignal(signal.SIGTERM), before)

  def test_sigterm_stops_workers_outside_training_and_raises_preempted(self):
    start = time.monotonic()
    with self.assertRaisesRegex(training.Preempted, "run the same command to resume"):
      training.run_jobs(_signal_the_parent_unhandled, [0, 1], workers=2)
    self.assertLess(time.monotonic() - start, 50)  # stopped, not slept out

  def test_worker_counts(self):
    self.assertEqual(training.resolve_workers(3), 3)
    self.assertEqual(training.resolve_workers(0), training.default_workers())
    self.assertBetween(training.default_workers(), 1, training.MAX_DEFAULT_WORKERS)
    for bad in (-1, 1.5, "2"):
      with self.assertRaisesRegex(ConfigError, rf"config.workers={bad!r}"):
        training.resolve_workers(bad)

  def test_a_containers_cpu_quota_caps_the_usable_cores(self):
    directory = tempfile.mkdtemp()
    v2, quota, period = (os.path.join(directory, name) for name in ("cpu.max", "quota", "period"))

    def usable(v2_text=None, v1_texts=(None, None)):
      for path, text in ((v2, v2_text), (quota, v1_texts[0]), (period, v1_texts[1])):
        if os.path.exists(path):
          os.remove(path)
        if text is not None:
          with open(path, "w") as handle:
            handle.write(text + "\n")
      with mock.patch.object(_workers, "CGROUP_V2_CPU_MAX", v2), \
           mock.patch.object(_workers, "CGROUP_V1_CPU_QUOTA", (quota, period)), \
           mock.patch.object(os, "sched_getaffinity", lambda pid: set(range(64)), create=True):
        return training.usable_cores(), training.default_workers()

    self.assertEqual(usable(), (64, training.MAX_DEFAULT_WORKERS))  # no quota: the affinity
    self.assertEqual(usable("max 100000"), (64, training.MAX_DEFAULT_WORKERS))
    self.assertEqual(usable("200000 100000"), (2, 2))
    self.assertEqual(usable("150000 100000"), (2, 2))  # 1.5 cores: rounded up
    self.assertEqual(usable("50000 100000"), (1, 1))
    self.assertEqual(usable(None, ("-1", "100000")), (64, training.MAX_DEFAULT_WORKERS))  # v1
    self.assertEqual(usable(None, ("300000", "100000")), (3, 3))
    self.assertEqual(usable("garbage"), (64, training.MAX_DEFAULT_WORKERS))


if __name__ == "__main__":
  absltest.main()
