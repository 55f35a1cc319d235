"""The experiment binary's contract: outputs, resume after SIGKILL, preemption by SIGTERM, errors."""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
from absl.testing import parameterized

from landscape import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Long enough that a kill lands mid-run on any machine; one device keeps the subprocesses quick.
LONG_RUN = ["--config=configs/train.py:smoke", "--config.steps=4000", "--config.checkpoint_every=100",
            "--config.steps_per_call=20", "--config.log_every=100", "--config.eval_every=0",
            "--config.tensorboard=False"]


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = ""
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _command(workdir, *args):
  return [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", *args]


def _run(workdir, *args):
  return subprocess.run(_command(workdir, *args), cwd=REPO, env=_env(), capture_output=True,
                        text=True, timeout=600)


def _summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as handle:
    return json.load(handle)


def _complete_checkpoints(workdir):
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _interrupt_after_first_checkpoint(workdir, signal_number):
  process = subprocess.Popen(_command(workdir, *LONG_RUN), cwd=REPO, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 300
  while not _complete_checkpoints(workdir):
    if process.poll() is not None or time.time() > deadline:
      process.kill()
      raise AssertionError(f"no checkpoint before the run ended:\n{process.stdout.read()[-3000:]}")
    time.sleep(0.01)
  process.send_signal(signal_number)
  output, _ = process.communicate(timeout=120)
  return process.returncode, output


def _train_rows(workdir):
  return [row for row in training.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "loss" in row]


class SmokeTest(absltest.TestCase):

  def test_smoke_preset_writes_every_output(self):
    workdir = tempfile.mkdtemp()
    result = _run(workdir, "--config=configs/train.py:smoke")
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    summary = _summary(workdir)
    self.assertEqual(summary["step"], 40)
    self.assertTrue(re.fullmatch(r"[0-9a-f]{64}", summary["digest"]))
    self.assertIn("loss", summary)
    self.assertIn("eval/test/accuracy", summary)
    self.assertEqual([row["step"] for row in _train_rows(workdir)], [10, 20, 30, 40])
    self.assertEqual(_complete_checkpoints(workdir), [20, 40])
    events = os.listdir(os.path.join(workdir, "tensorboard"))
    self.assertTrue(any(name.startswith("events.out.tfevents") for name in events), events)
    with open(os.path.join(workdir, "model.html")) as handle:
      self.assertIn("hidden_1", handle.read())
    self.assertIn("steps/s", result.stderr)
    self.assertIn("ETA", result.stderr)


class ResumeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.uninterrupted = tempfile.mkdtemp()
    result = _run(cls.uninterrupted, *LONG_RUN)
    assert result.returncode == 0, result.stderr[-3000:]

  def _resume_and_compare(self, workdir):
    self.assertFalse(os.path.exists(os.path.join(workdir, "summary.json")), "the run was not cut short")
    resumed = _run(workdir, *LONG_RUN)
    self.assertEqual(resumed.returncode, 0, resumed.stderr[-3000:])
    match = re.search(r"resumed from step (\d+)", resumed.stderr)
    self.assertIsNotNone(match, resumed.stderr[-3000:])
    self.assertBetween(int(match.group(1)), 100, 3900)
    self.assertEqual(_summary(workdir)["digest"], _summary(self.uninterrupted)["digest"])
    self.assertEqual(_train_rows(workdir), _train_rows(self.uninterrupted))

  def test_sigkill_then_rerun_ends_bitwise_where_uninterrupted_run_ends(self):
    workdir = tempfile.mkdtemp()
    returncode, output = _interrupt_after_first_checkpoint(workdir, signal.SIGKILL)
    self.assertEqual(returncode, -signal.SIGKILL, output[-3000:])
    self._resume_and_compare(workdir)

  def test_sigterm_checkpoints_and_rerun_resumes(self):
    workdir = tempfile.mkdtemp()
    returncode, output = _interrupt_after_first_checkpoint(workdir, signal.SIGTERM)
    self.assertEqual(returncode, 143, output[-3000:])
    self.assertIn("SIGTERM at step", output)
    stopped_at = int(re.search(r"SIGTERM at step (\d+)", output).group(1))
    self.assertEqual(_complete_checkpoints(workdir)[-1], stopped_at)
    self._resume_and_compare(workdir)


class BadInputTest(parameterized.TestCase):

  # Exit 1: absl rejects the flag while parsing it. Exit 2: the library rejects the value.
  @parameterized.named_parameters(
      ("misspelt_field", ["--config.stpes=5"], 1,
       r"--config\.stpes=5: the config has no field 'stpes' \(did you mean 'steps'\?\)"),
      ("misspelt_nested_field", ["--config.optimizer.learnig_rate=0.1"], 1,
       r"--config\.optimizer\.learnig_rate=0\.1: the config has no field 'learnig_rate'"),
      ("wrong_type", ["--config.steps=abc"], 1, r"--config\.steps=abc.*'abc'"),
      ("negative_learning_rate", ["--config.optimizer.learning_rate=-0.001"], 2,
       r"config\.optimizer\.learning_rate=-0\.001: must be > 0"),
      ("impossible_mesh", ["--config.mesh.num_devices=64"], 2, r"config\.mesh\.num_devices=64"),
      ("unknown_model", ["--config.model.name=resnet"], 2, r"config\.model\.name='resnet'"),
      ("unknown_preset", ["--config=configs/train.py:smok"], 1, r"unknown preset 'smok'"),
      ("bad_corner", ["--config.data.name=decoy_digits", "--config.data.corner=7"], 2,
       r"config\.data\.corner='7': expected 'random' or 0-3"),
      ("patch_too_large", ["--config.data.name=decoy_digits", "--config.data.patch_size=20"], 2,
       r"BadInputError: decoy digits: patch_size=20 must be in \[1, 8\]\n*$"),
  )
  def test_bad_input_fails_with_named_field(self, args, returncode, pattern):
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    result = _run(workdir, "--config=configs/train.py:smoke", *args)
    self.assertEqual(result.returncode, returncode, result.stderr[-3000:])
    self.assertRegex(result.stderr, pattern)
    self.assertFalse(os.path.exists(os.path.join(workdir, "checkpoints")))


if __name__ == "__main__":
  absltest.main()
