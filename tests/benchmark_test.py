"""The benchmark binary's smoke preset measures every variant and writes its figures."""

import json
import os
import subprocess
import sys
import tempfile

from unittest import mock

import jax
import numpy as np
import optax
from absl.testing import absltest

from configs import benchmark as benchmark_config
from landscape import benchmark
from landscape import data
from landscape import models
from landscape import objectives
from landscape import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BenchmarkTest(absltest.TestCase):

  def test_smoke_preset_reports_every_ratio(self):
    workdir = tempfile.mkdtemp()
    # The separate-jobs timing needs the compilation cache on; keep it out of the user's home.
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu",
               LANDSCAPE_COMPILATION_CACHE=os.path.join(workdir, "cache"))
    result = subprocess.run([sys.executable, "-m", "experiments.benchmark",
                             "--config=configs/benchmark.py:smoke", f"--workdir={workdir}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    with open(os.path.join(workdir, "benchmark.json")) as handle:
      results = json.load(handle)
    dictionary = "project_out_dictionary256_select8"
    self.assertEqual(set(results["transforms"]), {
        "plain", "plain_again", "project_out_k4", dictionary, dictionary + "_refresh_every_step",
        "attribute_dictionary256"})
    self.assertEqual(results["transforms"]["plain"]["ratio_to_plain"], 1.0)
    scheduled = results["transforms"][dictionary]["ratio_to_plain"]
    refreshing = results["transforms"][dictionary + "_refresh_every_step"]["ratio_to_plain"]
    self.assertAlmostEqual(results["transforms"][dictionary]["ratio_with_refreshes_amortized"],
                           scheduled + (refreshing - scheduled) / results["config"]["refresh_every"])
    for row in results["transforms"].values():
      self.assertGreater(row["ms_per_step"], 0)
    # Each transform's update alone, against AdamW's update timed in the same rounds.
    self.assertEqual(set(results["updates"]), {
        benchmark.ADAMW, "project_out_k4", dictionary, "attribute_dictionary256"})
    self.assertEqual(results["updates"][benchmark.ADAMW]["ratio_to_adamw_update"], 1.0)
    for row in results["updates"].values():
      self.assertGreater(row["ms_per_update"], 0)
    self.assertIn("update alone", result.stdout)
    seeds = results["seeds"]["2"]
    for speedup in ("compiling_speedup", "cache_warm_speedup", "steady_state_speedup",
                    "separate_jobs_speedup"):
      self.assertGreater(seeds[speedup], 0, speedup)
    self.assertIn("2 runs x 20 steps, one by one vs together", result.stdout)
    self.assertEqual(results["jax_version"], __import__("jax").__version__)

  def test_the_benchmark_times_the_loops_compiled_chunk(self):
    calls = []
    loop_run = training.JitChunk.run

    def recorded_run(runner, state, num_steps):
      calls.append(num_steps)
      return loop_run(runner, state, num_steps)

    config = benchmark_config.get_config("smoke")
    required = ("plain", "plain_again", benchmark.dictionary_variant(config),
                benchmark.dictionary_variant(config) + benchmark.REFRESHING)
    # The variants' transforms are beside the point here: every variant is the plain step.
    plain_variants = lambda config, model, params: {name: benchmark.Variant() for name in required}
    with mock.patch.object(training.JitChunk, "run", recorded_run), \
        mock.patch.object(benchmark, "transform_variants", plain_variants):
      results = benchmark.benchmark_transforms(config)
      timed_by_the_benchmark = sorted(calls)
      calls.clear()
      loop = training.loop_config()
      loop.update(dict(steps=4, batch_size=8, steps_per_call=2, log_every=2, eval_every=0,
                       checkpoint_every=0, tensorboard=False))
      training.train(loop, tempfile.mkdtemp(), model=models.mlp(64, (8,), 10),
                     objective=objectives.compose(objectives.cross_entropy()),
                     optimizer=optax.adam(1e-2), dataset=data.digits())
    self.assertEqual(set(results), set(required))
    # Every timed call (and each variant's warm-up) went through the loop's runner.
    expected = ([config.warmup_steps] * len(required) +
                [config.timed_steps] * len(required) * config.rounds)
    self.assertEqual(timed_by_the_benchmark, sorted(expected))
    self.assertEqual(calls, [2, 2])  # the loop's own calls, through the same method

  def test_compile_section_compares_the_loops_options_with_the_defaults(self):
    config = benchmark_config.get_config("smoke")
    cache_before = jax.config.jax_enable_compilation_cache
    results = benchmark.benchmark_compile(config)
    self.assertEqual(jax.config.jax_enable_compilation_cache, cache_before)
    self.assertEqual(set(results), {"plain", "project_out_k4"})
    for row in results.values():
      self.assertEqual(row["options"], training.CPU_COMPILER_OPTIONS)
      self.assertGreater(row["compile_seconds_default"], 0)
      self.assertGreater(row["compile_ratio"], 0)
      self.assertGreater(row["step_ratio"], 0)
      # Two steps of the same computation under two code generators: float32 rounding apart.
      self.assertLess(row["max_relative_param_difference"], 1e-5)

  def test_bad_config_names_the_field_before_measuring(self):
    workdir = os.path.join(tempfile.mkdtemp(), "bench")
    for field, value, pattern in (
        ("sections", "transforms,sed", r"config\.sections='transforms,sed': unknown \['sed'\]"),
        ("refresh_every", 5, r"config\.refresh_every=5: must exceed the 5 steps")):
      config = benchmark_config.get_config("smoke")
      config[field] = value
      with self.assertRaisesRegex(training.ConfigError, pattern):
        benchmark.run(config, workdir)
    self.assertFalse(os.path.exists(workdir))


class SAEBenchmarkTest(absltest.TestCase):

  def test_sae_section_runs_without_torch(self):
    config = benchmark_config.get_config("smoke")
    config.sections = "sae"
    workdir = tempfile.mkdtemp()
    with mock.patch.dict(sys.modules, {"torch": None}):  # import torch raises ImportError
      results = benchmark.run(config, workdir)
    row = results["sae"]["64"]
    self.assertIn("peer not installed", row["peer"])
    self.assertIsNone(row["ratio_to_peer"])
    self.assertIsNone(row["peer_eager_acts_per_second"])
    self.assertGreater(row["landscape_acts_per_second"], 0)
    self.assertEqual((row["d_in"], row["k"], row["batch_size"]), (16, 4, 32))
    self.assertEqual(set(row["first_step_loss"]), {"landscape"})
    with open(os.path.join(workdir, "benchmark.json")) as handle:
      self.assertEqual(json.load(handle)["sae"]["64"]["peer"], row["peer"])
    self.assertNotIn("transforms", results)

  def test_torch_peer_trains_as_landscape_does(self):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      self.skipTest("PyTorch is not installed (it is optional)")
    settings = benchmark_config.get_config("smoke").sae
    settings.compute_dtype = "float32"
    pool = benchmark._activation_pool(settings)
    landscape_run, initial = benchmark.landscape_sae_trainer(settings, 64, pool)
    peer_run = benchmark.sae_torch_peer(torch, settings, initial, pool, compile_forward=False)
    # Same initial weights, batches, recipe and float32: five steps of losses agree to float32
    # rounding carried through Adam (measured: 9e-8 relative; the peer with twice the learning
    # rate differs by 1e-2).
    np.testing.assert_allclose(peer_run(5), landscape_run(5), rtol=1e-5)

  def test_bad_sae_config_is_named_before_measuring(self):
    workdir = os.path.join(tempfile.mkdtemp(), "bench")
    for field, value, pattern in (
        ("d_sae", (2,), r"config\.sae\.d_sae=\(2,\): give one or more ints >= k=4"),
        ("compute_dtype", "float16", r"config\.sae\.compute_dtype='float16'"),
        ("peer", "jax", r"config\.sae\.peer='jax'")):
      config = benchmark_config.get_config("smoke")
      config.sections = "sae"
      config.sae[field] = value
      with self.assertRaisesRegex(training.ConfigError, pattern):
        benchmark.run(config, workdir)
    self.assertFalse(os.path.exists(workdir))

if __name__ == "__main__":
  absltest.main()
