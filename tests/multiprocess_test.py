"""Several processes train as one (the multi-controller path): localhost, JAX's CPU collectives.

Every process is `python -m experiments.train` with `config.distributed` on, 4 CPU devices each,
talking over 127.0.0.1 only (the coordinator and gloo both bound there). Two processes of 4 devices
must train the `smoke` run like one process of 8, write metrics and summary once, leave checkpoints
that either layout resumes, and stop, not hang, when a peer dies.
"""

import contextlib
import ipaddress
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import psutil
from absl import logging
from absl.testing import absltest

from landscape import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES_PER_PROCESS = 4
NUM_PROCESSES = 2
TOLERANCE = 1e-5
SMOKE = ["--config=configs/train.py:smoke"]
RUN_TIMEOUT_S = 300
# Short, so a dead peer is noticed quickly; heartbeats come from a thread of their own, so a busy
# machine compiling does not miss them.
HEARTBEAT_TIMEOUT_S = 10
# How a survivor says its peer is gone: JAX's coordination service once heartbeats stop (the usual
# case), or gloo itself when the peer died in the middle of a transfer. Either aborts the process.
PEER_DEATH_MESSAGES = (r"JAX distributed service detected fatal errors\. This most likely "
                       r"indicates that another task died|gloo::\w+")


def _free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


@contextlib.contextmanager
def _no_core_files():
  """Processes started inside leave no core file (in the repository, their cwd) when they abort."""
  soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
  resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


class _Processes:
  """One run's processes, started together; their output goes to files under ``log_dir``."""

  def __init__(self, workdir: str, *args: str, num_processes: int, devices_per_process: int):
    self.log_dir = tempfile.mkdtemp()
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    port = _free_port()
    self.processes = []
    for process_id in range(num_processes):
      distributed = [] if num_processes == 1 else [
          "--config.distributed.enabled=True",
          f"--config.distributed.coordinator_address=127.0.0.1:{port}",
          f"--config.distributed.coordinator_bind_address=127.0.0.1:{port}",
          "--config.distributed.cpu_collectives_hostname=127.0.0.1",
          f"--config.distributed.num_processes={num_processes}",
          f"--config.distributed.process_id={process_id}",
          f"--config.distributed.heartbeat_timeout_seconds={HEARTBEAT_TIMEOUT_S}",
          "--config.distributed.initialization_timeout_seconds=120",
          "--config.distributed.shutdown_timeout_seconds=60"]
      command = [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", *args]
      try:
        with open(self._log_path(process_id), "w") as log, _no_core_files():
          self.processes.append(subprocess.Popen(
              command + distributed, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
      except BaseException:
        self.kill()
        raise
    self.addresses = set()  # every local address a process held a TCP socket on

  def _log_path(self, process_id: int) -> str:
    return os.path.join(self.log_dir, f"process_{process_id}.log")

  def log(self, process_id: int) -> str:
    with open(self._log_path(process_id)) as handle:
      return handle.read()

  def record_addresses(self) -> None:
    for process in self.processes:
      with contextlib.suppress(psutil.Error):
        for connection in psutil.Process(process.pid).net_connections(kind="inet"):
          self.addresses.add(connection.laddr.ip)
          if connection.raddr:
            self.addresses.add(connection.raddr.ip)

  def wait(self, timeout_s: float = RUN_TIMEOUT_S, *, processes=None) -> list[int]:
    """Waits for ``processes`` (default: all) to exit; their return codes. Fails after timeout_s."""
    processes = self.processes if processes is None else processes
    deadline = time.monotonic() + timeout_s
    while any(process.poll() is None for process in processes):
      if time.monotonic() > deadline:
        raise AssertionError(f"still running after {timeout_s} s:\n{self.tails()}")
      self.record_addresses()
      time.sleep(0.2)
    return [process.returncode for process in processes]

  def tails(self) -> str:
    return "\n".join(f"--- process {index}:\n{self.log(index)[-3000:]}"
                     for index in range(len(self.processes)))

  def kill(self) -> None:
    for process in self.processes:
      if process.poll() is None:
        process.kill()
      process.wait(timeout=60)


@contextlib.contextmanager
def _started(workdir: str, *args: str, num_processes: int = NUM_PROCESSES,
             devices_per_process: int = DEVICES_PER_PROCESS):
  processes = _Processes(workdir, *args, num_processes=num_processes,
                         devices_per_process=devices_per_process)
  try:
    yield processes
  finally:
    processes.kill()


ONE_PROCESS = {"num_processes": 1, "devices_per_process": NUM_PROCESSES * DEVICES_PER_PROCESS}


def _train_together(*jobs: tuple[str, list[str], dict]) -> list[_Processes]:
  """Runs jobs (workdir, args, layout) side by side to the end; every process must exit 0."""
  with contextlib.ExitStack() as stack:
    started = [stack.enter_context(_started(workdir, *SMOKE, *args, **layout))
               for workdir, args, layout in jobs]
    for processes in started:
      returncodes = processes.wait()
      if returncodes != [0] * len(returncodes):
        raise AssertionError(f"return codes {returncodes}:\n{processes.tails()}")
  return started


def _train(workdir: str, *args: str, **layout) -> _Processes:
  [processes] = _train_together((workdir, list(args), layout))
  return processes


def _summary(workdir: str) -> dict:
  with open(os.path.join(workdir, "summary.json")) as handle:
    return json.load(handle)


def _rows(workdir: str) -> list[dict]:
  return training.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def _complete_checkpoints(workdir: str) -> list[int]:
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _checkpoint(workdir: str, step: int):
  """The whole saved train state of ``step`` as NumPy arrays, whatever layout wrote it."""
  path = os.path.join(workdir, "checkpoints", str(step), "default")
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  return checkpointer.restore(path, restore_args=jax.tree_util.tree_map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree))


def _resumed_from(processes: _Processes) -> list[int]:
  return [int(step) for index in range(len(processes.processes))
          for step in re.findall(r"resumed from step (\d+)", processes.log(index))]


class TwoProcessesTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.reference = tempfile.mkdtemp()  # one process, 8 devices, 40 steps (checkpoints 20, 40)
    _train(cls.reference, **ONE_PROCESS)

  def assert_rows_match_reference(self, workdir, last_step):
    """metrics.jsonl holds each reference row up to last_step once, values within 1e-5."""
    expected = [row for row in _rows(self.reference) if row["step"] <= last_step]
    rows = _rows(workdir)
    self.assertEqual([(row["step"], sorted(row)) for row in rows],
                     [(row["step"], sorted(row)) for row in expected])
    chex.assert_trees_all_close(rows, expected, atol=TOLERANCE, rtol=TOLERANCE)

  def assert_state_matches_reference(self, workdir, step):
    chex.assert_trees_all_close(_checkpoint(workdir, step), _checkpoint(self.reference, step),
                                atol=TOLERANCE, rtol=TOLERANCE)

  def test_two_processes_train_like_one_and_either_resumes_their_checkpoint(self):
    workdir = tempfile.mkdtemp()
    processes = _train(workdir, "--config.steps=20")
    self.assertTrue(processes.addresses, "no socket was seen")
    for address in processes.addresses:
      address = ipaddress.ip_address(address)
      self.assertTrue((getattr(address, "ipv4_mapped", None) or address).is_loopback,
                      f"a process used {address}: {processes.addresses}")

    reference_rows = {row["step"]: row for row in _rows(self.reference) if "loss" in row}
    self.assertEqual(_summary(workdir)["step"], 20)
    # summary.json holds a list over runs; a metrics.jsonl row of one run holds the number.
    np.testing.assert_allclose(_summary(workdir)["loss"], np.atleast_1d(reference_rows[20]["loss"]),
                               rtol=0, atol=TOLERANCE)
    self.assertEqual(_complete_checkpoints(workdir), [20])
    self.assert_state_matches_reference(workdir, 20)
    # Written once, by process 0: every row once, one event file, no half-written files.
    self.assert_rows_match_reference(workdir, 20)
    events = os.listdir(os.path.join(workdir, "tensorboard"))
    self.assertLen(events, 1)
    self.assertEqual([name for name in os.listdir(workdir) if name.endswith(".tmp")], [])

    # Both layouts resume the 2-process checkpoint at step 20 and end where the reference ends.
    in_one_process = tempfile.mkdtemp()
    shutil.copytree(workdir, in_one_process, dirs_exist_ok=True)
    in_two, in_one = _train_together((workdir, [], {}), (in_one_process, [], ONE_PROCESS))
    # The digest hashes the parameters' bytes: equal within 1e-5 is not equal bytes.
    without_digest = lambda summary: {k: v for k, v in summary.items() if k != "digest"}
    for name, resumed, processes in [("two processes", workdir, in_two),
                                     ("one process", in_one_process, in_one)]:
      with self.subTest(name):
        self.assertEqual(_resumed_from(processes), [20] * len(processes.processes))
        self.assertEqual(_summary(resumed)["step"], 40)
        chex.assert_trees_all_close(without_digest(_summary(resumed)),
                                    without_digest(_summary(self.reference)),
                                    atol=TOLERANCE, rtol=TOLERANCE)
        self.assertEqual(_complete_checkpoints(resumed), [20, 40])
        self.assert_state_matches_reference(resumed, 40)
        self.assert_rows_match_reference(resumed, 40)

  def test_a_killed_process_stops_the_other_and_a_rerun_resumes(self):
    workdir = tempfile.mkdtemp()
    run = ["--config.eval_every=0", "--config.log_every=20"]
    with _started(workdir, *SMOKE, *run, "--config.steps=4000") as processes:
      deadline = time.monotonic() + RUN_TIMEOUT_S
      while not _complete_checkpoints(workdir):
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes.processes):
          raise AssertionError(f"no checkpoint before the run ended:\n{processes.tails()}")
        time.sleep(0.05)
      survivor, victim = processes.processes  # process 1 dies; process 0 holds the coordinator
      victim.kill()
      killed_at = time.monotonic()
      # The survivor waits in a collective; JAX notices the silent peer within the heartbeat
      # timeout.
      [returncode] = processes.wait(HEARTBEAT_TIMEOUT_S + 60, processes=[survivor])
      logging.info("the survivor stopped %.1f s after its peer was killed",
                   time.monotonic() - killed_at)
    self.assertEqual(returncode, -signal.SIGABRT, processes.tails())
    self.assertRegex(processes.log(0), PEER_DEATH_MESSAGES)
    self.assertFalse(os.path.exists(os.path.join(workdir, "summary.json")))

    last_checkpoint = _complete_checkpoints(workdir)[-1]
    rerun = _train(workdir, *run, f"--config.steps={last_checkpoint + 20}")
    self.assertEqual(_resumed_from(rerun), [last_checkpoint] * NUM_PROCESSES)
    self.assertEqual(_summary(workdir)["step"], last_checkpoint + 20)
    steps = [row["step"] for row in _rows(workdir) if "loss" in row]
    self.assertEqual(steps, list(range(20, last_checkpoint + 21, 20)))


class DistributedConfigTest(absltest.TestCase):

  def _config(self, **fields):
    config = training.loop_config()
    config.distributed.update(fields)
    return config

  def test_bad_settings_name_the_field_before_connecting(self):
    cases = [
        (dict(enabled=True, num_processes=2, process_id=2),
         r"config\.distributed\.process_id=2: must be below config\.distributed\.num_processes=2"),
        (dict(enabled=True, coordinator_address="localhost"),
         r"config\.distributed\.coordinator_address='localhost': expected HOST:PORT"),
        (dict(enabled=True, coordinator_bind_address="127.0.0.1:99999"),
         r"config\.distributed\.coordinator_bind_address='127\.0\.0\.1:99999'"),
        (dict(enabled=True, heartbeat_timeout_seconds=0),
         r"config\.distributed\.heartbeat_timeout_seconds=0: must be > 0"),
        (dict(enabled=True, cpu_collectives="nccl"),
         r"config\.distributed\.cpu_collectives='nccl': expected one of"),
        (dict(enabled=True, cpu_collectives="mpi", cpu_collectives_hostname="127.0.0.1"),
         r"config\.distributed\.cpu_collectives_hostname='127\.0\.0\.1': applies to"),
        (dict(process_id=1),
         r"config\.distributed\.process_id=1: has no effect unless config\.distributed\.enabled"),
    ]
    for fields, pattern in cases:
      with self.subTest(str(fields)):
        with self.assertRaisesRegex(training.ConfigError, pattern):
          training.initialize_distributed(self._config(**fields))

  def test_disabled_is_a_no_op(self):
    training.initialize_distributed(self._config())
    self.assertFalse(jax.distributed.is_initialized())


if __name__ == "__main__":
  absltest.main()
