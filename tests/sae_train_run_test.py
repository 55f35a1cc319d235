"""The SAE experiment's contract: its files, bitwise resume, SAELens output, and bad config named
before anything compiles (its other sources are in sae_train_sources_test.py)."""

import json
import os
import subprocess
import sys
import tempfile

import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from configs import train_sae as train_sae_config
from landscape import sae as sae_lib
from landscape import train_sae
from landscape import training
from landscape.training import ConfigError


def _tiny_planted(**changes):
  """Two groups (TopK at two k, JumpReLU) on a small planted dictionary, inputs normalised."""
  config = train_sae_config.get_config("smoke")
  config.source = "planted"
  config.planted.d_in = 16
  config.planted.num_features = 32
  config.planted.probability = 0.1
  config.planted.eval_size = 256
  config.steps = 20
  config.batch_size = 32
  config.log_every = 5
  config.eval_every = 10
  config.checkpoint_every = 10
  config.steps_per_call = 5
  config.async_checkpoints = False
  config.normalize_inputs = True
  config.unlock()
  del config.saes["standard"]
  config.saes.jumprelu = train_sae_config.sae_group(
      architecture="jumprelu", d_sae=32, k=(), learning_rate=(3e-3,), sparsity_coefficient=(0.01,),
      warmup_steps=5, b_dec_init="zero")
  config.lock()
  config.saes.topk.learning_rate = (3e-3,)
  for name, value in changes.items():
    target = config
    *path, last = name.split(".")
    for part in path:
      target = target[part]
    target[last] = value
  return config


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _binary(*args):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.train_sae",
                         "--config=configs/train_sae.py:smoke", f"--workdir={tempfile.mkdtemp()}",
                         *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _rows(workdir):
  return training.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


class RunTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = _tiny_planted()
    cls.workdir = tempfile.mkdtemp()
    cls.result = train_sae.run(cls.config, cls.workdir)
    # The same run interrupted after step 10 (its second checkpoint), then resumed.
    cls.resumed_dir = tempfile.mkdtemp()
    train_sae.run(_tiny_planted(steps=10), cls.resumed_dir)
    cls.resumed = train_sae.run(_tiny_planted(), cls.resumed_dir)

  def test_outputs(self):
    labels = self.result.summary["labels"]
    self.assertEqual(labels, ["jumprelu/seed0", "topk/k2_seed0", "topk/k4_seed0"])
    for name in ("config.json", "metrics.jsonl", "summary.json", "report.md", "frontier.png",
                 "densities.png", "densities.npz"):
      self.assertTrue(os.path.exists(os.path.join(self.workdir, name)), name)
    rows = _rows(self.workdir)
    train_rows = [row for row in rows if "loss" in row]
    self.assertEqual([row["step"] for row in train_rows], [5, 10, 15, 20])
    self.assertTrue(all(len(row["loss"]) == 3 for row in train_rows))
    eval_rows = [row for row in rows if "eval/fve" in row]
    self.assertEqual([row["step"] for row in eval_rows], [0, 10, 20])
    self.assertIn("eval/mmcs", eval_rows[-1])
    with open(os.path.join(self.workdir, "report.md")) as handle:
      report = handle.read()
    for label in labels:
      self.assertIn(f"| {label} |", report)
    self.assertIn("MMCS", report)
    with open(os.path.join(self.workdir, "summary.json")) as handle:
      summary = json.load(handle)
    self.assertEqual(summary["step"], 20)
    self.assertEqual([entry["label"] for entry in summary["saes"]], labels)

  def test_saved_saes_load_and_judge_raw_activations_as_reported(self):
    source = train_sae.make_source(self.config)
    for entry in self.result.summary["saes"]:
      loaded = sae_lib.load_saelens(os.path.join(self.workdir, entry["saelens"]))
      trained = self.result.saes[entry["label"]]
      self.assertEqual(type(loaded.sae), type(trained))
      for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        np.testing.assert_array_equal(getattr(loaded.sae, name), getattr(trained, name))
      # The saved SAE has the normalisation folded in: on raw activations it explains what the
      # trained one explained on normalised ones (float32 rounding of the scale).
      acts = jnp.asarray(source.eval_acts)
      fve = float(sae_lib.fraction_variance_explained(acts, loaded.sae(acts)))
      self.assertAlmostEqual(fve, entry["fve"], delta=1e-4)
    self.assertNotAlmostEqual(self.result.summary["input_scale"], 1.0, places=2)

  def test_resume_is_bitwise(self):
    self.assertEqual(self.resumed.summary["digest"], self.result.summary["digest"])
    whole = [row for row in _rows(self.workdir)]
    resumed = [row for row in _rows(self.resumed_dir)]
    self.assertEqual(resumed, whole)

  def test_resuming_with_another_config_is_refused(self):
    with self.assertRaisesRegex(ConfigError, r"config.saes.topk.learning_rate=\[0.01\]"):
      train_sae.run(_tiny_planted(**{"saes.topk.learning_rate": (1e-2,)}), self.workdir)


class BadConfigTest(absltest.TestCase):

  def test_bad_fields_are_named_before_compiling(self):
    cases = [({"source": "web"}, "config.source='web'"),
             ({"saes.topk.k": (0,)}, "config.saes.topk.k=(0,)"),
             ({"saes.topk.k": (64,)}, "config.saes.topk.k=(64,)"),
             ({"saes.topk.learning_rate": ()}, "config.saes.topk.learning_rate=()"),
             ({"saes.standard.sparsity_coefficient": (0.0,)},
              "config.saes.standard.sparsity_coefficient"),
             ({"saes.topk.warmup_steps": -1}, "config.saes.topk.warmup_steps=-1"),
             ({"saes.topk.b_dec_init": "median"}, "config.saes.topk.b_dec_init='median'"),
             ({"model.buffer_size": 100}, "config.model.buffer_size=100"),
             ({"model.site": "hidden_9"}, "config.model.site='hidden_9'"),
             ({"model.checkpoint": "/nonexistent"}, "config.model.checkpoint='/nonexistent'"),
             ({"steps": 0}, "config.steps=0"),
             ({"source": "arrays"}, "config.arrays.path=''")]
    for changes, named in cases:
      config = train_sae_config.get_config("smoke")
      for field, value in changes.items():
        target = config
        *path, last = field.split(".")
        for part in path:
          target = target[part]
        target[last] = value
      with self.subTest(named), self.assertRaisesRegex(ConfigError, named.replace("(", r"\(")
                                                       .replace(")", r"\)")):
        train_sae.run(config, tempfile.mkdtemp())

  def test_misspelt_field_fails(self):
    config = train_sae_config.get_config("smoke")
    with self.assertRaises(AttributeError):
      config.saes.topk.learnig_rate = (1e-3,)

  def test_the_binary_names_a_bad_field(self):
    misspelt = _binary("--config.saes.topk.learnig_rate=0.1")
    self.assertNotEqual(misspelt.returncode, 0)
    self.assertIn("learnig_rate", misspelt.stderr)
    bad = _binary("--config.saes.topk.warmup_steps=-3")
    self.assertEqual(bad.returncode, 2, bad.stderr[-2000:])
    self.assertIn("config.saes.topk.warmup_steps=-3", bad.stderr)



if __name__ == "__main__":
  absltest.main()
