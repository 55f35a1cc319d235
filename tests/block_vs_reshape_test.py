"""The flagship experiment: every arm end to end, criteria from the run's own numbers, a planted null."""

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from configs import block_vs_reshape as flagship_config
from landscape import analysis
from landscape import block_vs_reshape
from landscape import objectives
from landscape import training
from landscape.block_vs_reshape import _arms
from landscape.block_vs_reshape import _criteria
from landscape.block_vs_reshape import _report
from landscape.block_vs_reshape import _results
from landscape.block_vs_reshape import _sample_efficiency
from landscape.block_vs_reshape import _schedule
from landscape.block_vs_reshape import _tasks
from landscape.directions import make_basis
from landscape.training import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _binary(workdir, *args):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.block_vs_reshape", f"--workdir={workdir}",
                         *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)


class SmokeTest(absltest.TestCase):
  """One run of the smoke preset: every task and arm through the binary."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = tempfile.mkdtemp()
    cls.result = _binary(cls.workdir, "--config=configs/block_vs_reshape.py:smoke")

  def test_every_arm_of_every_task_ran_and_is_reported(self):
    self.assertEqual(self.result.returncode, 0, self.result.stderr[-4000:])
    with open(os.path.join(self.workdir, "report.md")) as handle:
      report = handle.read()
    for task in block_vs_reshape.TASKS:
      self.assertIn(_tasks.TASK_TITLES[task], report)
      for arm in block_vs_reshape.ARMS:
        with open(os.path.join(self.workdir, task, arm, "summary.json")) as handle:
          summary = json.load(handle)
        self.assertEqual(summary["step"], 20)
        self.assertLen(summary["eval/ood/accuracy"], 2 * (2 if arm.startswith(("ablate", "project"))
                                                         else 1))
        self.assertRegex(report, rf"\| {arm} \| {block_vs_reshape.FAMILIES[arm]} \|")
    for figure in ("ood_accuracy.png", "decodability.png", "decodability_over_training.png",
                   "sample_efficiency.png"):
      self.assertGreater(os.path.getsize(os.path.join(self.workdir, figure)), 10_000, figure)
    self.assertIn("## Toy Colors sample efficiency", report)
    # The figures over training have a curve for every arm: the OOD test set and decodability at the
    # model's first site at every evaluation (step 0 and the preset's 2), every site at the last.
    for task in block_vs_reshape.TASKS:
      first_site = _tasks.build_task(task, flagship_config.get_config("smoke")).model.site_names[0]
      for arm in block_vs_reshape.ARMS:
        result = _results.load_arm(self.workdir, task, arm)
        self.assertEqual(result.tracked_site(), first_site, (task, arm))
        for metric in ("eval/ood/accuracy", f"decodability/{first_site}"):
          np.testing.assert_array_equal(result.curves[metric][0], [0, 10, 20], (task, arm, metric))
        for site in result.sites():
          if site != first_site:
            np.testing.assert_array_equal(result.curves[f"decodability/{site}"][0], [20])
        np.testing.assert_array_equal(result.curves["eval/val_ood/accuracy"][0], [20])
    for task in block_vs_reshape.TASKS:
      with open(os.path.join(self.workdir, task, "model.html")) as handle:
        page = handle.read()
      self.assertIn("hidden_0" if task != "marker" else "blocks.1.resid_post", page)
    with open(os.path.join(self.workdir, "marker", "ablate_refit", "directions.html")) as handle:
      self.assertIn("concept_basis/blocks.0.resid_post", handle.read())

  def test_one_process_trains_bitwise_what_the_worker_processes_trained(self):
    # The binary ran its arms in worker processes (config.workers=0: one per core; CI has two);
    # the same arms trained here, one after another, end with the same parameters and figures.
    self.assertEqual(self.result.returncode, 0, self.result.stderr[-4000:])
    config = flagship_config.get_config("smoke")
    config.tasks, config.arms, config.workers = "toy_colors", "oracle,ablate_refit", 1
    config.sample_efficiency.enabled = False
    config.mesh.num_devices = 1  # the binary's one device
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    block_vs_reshape.run(config, workdir)
    for arm in ("oracle", "ablate_refit"):
      here, there = (json.loads(pathlib.Path(root, "toy_colors", arm, "summary.json").read_text())
                     for root in (workdir, self.workdir))
      self.assertEqual(here, there)

  def test_criteria_sentences_are_computed_from_the_runs_own_files(self):
    with open(os.path.join(self.workdir, "report.md")) as handle:
      report = handle.read()
    with open(os.path.join(self.workdir, "summary.json")) as handle:
      summary = json.load(handle)
    for task in block_vs_reshape.TASKS:
      results = [_results.load_arm(self.workdir, task, arm) for arm in block_vs_reshape.ARMS]
      recomputed = _criteria.evaluate_all(results)
      self.assertLen(recomputed, 3)
      for criterion, stored in zip(recomputed, summary["tasks"][task]["criteria"]):
        self.assertIn(criterion.sentence, report)
        self.assertEqual(criterion.outcome, stored["verdict"])
      # The first criterion's number is the paired difference of the two named arms' OOD accuracy.
      first = recomputed[0]
      names = re.findall(r"`(\w+)`", first.sentence)
      by_arm = {result.arm: result for result in results}
      difference = by_arm[names[0]].final["eval/ood/accuracy"] - by_arm[names[1]].final["eval/ood/accuracy"]
      self.assertAlmostEqual(first.estimate.mean, float(np.mean(difference)), places=9)
      # The comparison beside criterion 3: the best blocking arm's decodability minus the oracle's.
      over_oracle = _report.decodability_over_oracle(results)
      self.assertIn(_report._over_oracle_sentence(results, over_oracle), report)
      blocking = _results.best_of(results, "blocking")
      for site, estimate in over_oracle.items():
        difference = (blocking.final[f"decodability/{site}"] -
                      by_arm["oracle"].final[f"decodability/{site}"])
        self.assertAlmostEqual(estimate.mean, float(np.mean(difference)), places=9)
        self.assertAlmostEqual(
            summary["tasks"][task]["decodability_blocking_minus_oracle"][site]["mean"], estimate.mean)

  def test_rerun_reads_finished_arms_back_and_writes_the_same_report(self):
    with open(os.path.join(self.workdir, "summary.json")) as handle:
      before = json.load(handle)
    again = _binary(self.workdir, "--config=configs/block_vs_reshape.py:smoke",
                    "--config.sample_efficiency.enabled=False")
    self.assertEqual(again.returncode, 0, again.stderr[-3000:])
    self.assertEqual(again.stderr.count("finished before, reading its results"),
                     len(block_vs_reshape.TASKS) * len(block_vs_reshape.ARMS))
    with open(os.path.join(self.workdir, "summary.json")) as handle:
      after = json.load(handle)
    self.assertEqual(after["tasks"], before["tasks"])

  def test_rerun_with_different_settings_is_refused_and_changes_nothing(self):
    paths = [os.path.join(self.workdir, name) for name in
             ("summary.json", "report.md", "decoy_digits/plain/summary.json")]
    before = [pathlib.Path(path).read_bytes() for path in paths]
    again = _binary(self.workdir, "--config=configs/block_vs_reshape.py:smoke",
                    "--config.refit_every=7", "--config.sample_efficiency.enabled=False")
    self.assertEqual(again.returncode, 2, again.stderr[-3000:])
    self.assertRegex(again.stderr, r"config\.experiment\.refit_every=7 \(the run has 5\)")
    self.assertEqual([pathlib.Path(path).read_bytes() for path in paths], before)


class PlantedNullTest(absltest.TestCase):
  """A shortcut no model can use (the patch carries no label information): nothing to gain.

  Measured with the preset's full settings (RESULTS.md): every arm matches plain training within
  noise except re-estimated activation ablation, which costs about three points of accuracy even
  here (its basis jumps at every refit). So: no arm may beat plain, and every arm whose block does
  not move during training must equal it.
  """

  def test_no_arm_gains_and_stable_arms_equal_plain(self):
    config = flagship_config.get_config("planted")
    config.mesh.num_devices = 1  # the preset as a user runs it (the test session has 8 CPU devices)
    workdir = tempfile.mkdtemp()
    summary = block_vs_reshape.run(config, workdir)
    plain = _results.load_arm(workdir, "decoy_digits", "plain")
    for arm in block_vs_reshape.ARMS:
      result = _results.load_arm(workdir, "decoy_digits", arm)
      difference = analysis.paired_difference(result.final["eval/ood/accuracy"],
                                              plain.final["eval/ood/accuracy"])
      self.assertLessEqual(difference.mean, 0.01, f"{arm} gains {difference} over plain")
      if arm != "ablate_refit":
        # Within noise: the paired 95% interval reaches zero, or the difference is under 2 points.
        self.assertTrue(difference.low <= 0.0 <= difference.high or abs(difference.mean) < 0.02,
                        f"{arm}: {difference} against plain")
      shortcut = summary["tasks"]["decoy_digits"]["arms"][arm]["shortcut_following"]["mean"]
      self.assertLess(shortcut, 0.05, arm)
    # The concept is decodable above chance everywhere (criterion 3 cannot tell), but no more after
    # blocking than in the oracle, which never saw it agree with the label.
    over_oracle = summary["tasks"]["decoy_digits"]["decodability_blocking_minus_oracle"]
    self.assertEqual(set(over_oracle), {"hidden_0", "hidden_1"})
    for site, estimate in over_oracle.items():
      self.assertLess(abs(estimate["mean"]), 0.05, site)


class PiecesTest(parameterized.TestCase):

  def test_shortcut_following_counts_only_contradicting_examples(self):
    logits = jnp.asarray(np.eye(4)[[0, 1, 2, 3]] * 5.0)
    batch = {"labels": jnp.asarray([0, 1, 2, 3]), "concept": jnp.asarray([0, 2, 2, 1])}
    follows, weights = _arms.shortcut_following(logits, batch)
    np.testing.assert_array_equal(weights, [0, 1, 0, 1])   # examples 1 and 3 contradict their label
    np.testing.assert_array_equal(follows * weights, [0, 0, 0, 0])  # and the model sided with the label

  def test_shortcut_following_reads_the_scored_position_of_sequences(self):
    logits = jnp.zeros((2, 3, 4)).at[:, 2, 3].set(5.0)
    batch = {"labels": jnp.full((2, 3), 1), "label_mask": jnp.asarray([[0, 0, 1], [0, 0, 1]]),
             "concept": jnp.asarray([3, 1])}
    follows, weights = _arms.shortcut_following(logits, batch)
    np.testing.assert_array_equal(weights, [1, 0])
    np.testing.assert_array_equal(follows, [1, 0])

  def test_gated_rows_keep_only_the_chosen_site(self):
    basis = make_basis(np.eye(2, 5), site="hidden_0")
    run = objectives.RunView(step=jnp.asarray(0), hparams={"site": jnp.asarray(1, jnp.int32)},
                             refreshed={"concept_basis/hidden_0": basis}, term_states={})
    np.testing.assert_array_equal(_arms._gated_rows(run, 0, "hidden_0"), np.zeros((2, 5)))
    np.testing.assert_array_equal(_arms._gated_rows(run, 1, "hidden_0"), basis.vectors)

  def test_arms_and_tasks_are_one_registry_each(self):
    self.assertEqual(block_vs_reshape.ARMS, tuple(_arms.ARM_REGISTRY))
    self.assertEqual(block_vs_reshape.FAMILIES,
                     {name: arm.family for name, arm in _arms.ARM_REGISTRY.items()})
    self.assertEqual(set(block_vs_reshape.FAMILIES.values()), {"baseline", "blocking", "reshaping"})
    self.assertEqual(block_vs_reshape.TASKS, tuple(_tasks.TASK_REGISTRY))
    self.assertEqual(set(_tasks.TASK_TITLES), set(block_vs_reshape.TASKS))

  def test_blocking_arms_grid_over_the_two_sites_and_refit_only_when_named(self):
    config = flagship_config.get_config("smoke")
    task = _tasks.build_task("decoy_digits", config)
    for arm in ("ablate_fixed", "ablate_refit", "project_fixed", "project_refit"):
      plan = block_vs_reshape.plan_arm(arm, task, config)
      self.assertEqual(plan.grid, [{"site": 0}, {"site": 1}])
      self.assertTrue(all(type(point["site"]) is int for point in plan.grid))
      expected = config.refit_every if arm.endswith("refit") else 0
      self.assertEqual([refresher.every for refresher in plan.refreshers], [expected, expected])
    with self.assertRaisesRegex(ConfigError, r"unknown arm 'ablate'"):
      block_vs_reshape.plan_arm("ablate", task, config)

  def test_plain_and_the_oracle_train_in_one_program(self):
    """On an image task plain and the oracle lower to one program (only their data differ), which
    JAX's compilation cache compiles once."""
    config = flagship_config.get_config("smoke")
    task = _tasks.build_task("decoy_digits", config)
    mesh = training.make_mesh({"seed": 1, "data": 1, "model": 1})

    def lowered(arm):
      plan = block_vs_reshape.plan_arm(arm, task, config)
      state = jax.eval_shape(lambda: training.stack_runs([
          training.init_state(jax.random.PRNGKey(seed), model=task.model,
                              objective=plan.objective, optimizer=plan.optimizer,
                              refreshers=plan.refreshers, hparams=point)
          for point in plan.grid for seed in range(config.num_seeds)]))
      runner = training.compile_chunk(
          model=task.model, objective=plan.objective, optimizer=plan.optimizer,
          dataset=plan.dataset, batch_size=task.batch_size, mesh=mesh,
          shardings=training.state_shardings(state, mesh), refreshers=plan.refreshers,
          optimizer_extra_args=plan.optimizer_extra_args)
      return runner.lower(state, 5).as_text()

    plain = lowered("plain")
    self.assertEqual(lowered("oracle"), plain)
    self.assertNotEqual(lowered("grad_mask"), plain)  # its mask is a constant of its program

  def test_checkpoints_fall_on_evaluations_so_every_call_has_one_length(self):
    config = flagship_config.get_config()
    for steps, every, checkpoint_every in ((1500, 300, 600), (300, 60, 300), (1000, 200, 600)):
      loop = _schedule.loop_config(config, steps)
      self.assertEqual((loop.eval_every, loop.steps_per_call, loop.checkpoint_every),
                       (every, every, checkpoint_every))
    config.unlock()
    config.checkpoint_every = 100  # shorter than an interval: one interval
    self.assertEqual(_schedule.loop_config(config, 1500).checkpoint_every, 300)

  @parameterized.parameters(*block_vs_reshape.ARMS)
  def test_every_arm_has_a_plan_on_every_task(self, arm):
    config = flagship_config.get_config("smoke")
    for task_name in ("decoy_digits", "marker"):
      task = _tasks.build_task(task_name, config)
      plan = block_vs_reshape.plan_arm(arm, task, config)
      self.assertNotEmpty(plan.grid)
      if block_vs_reshape.FAMILIES[arm] == "reshaping":
        self.assertEqual([point["weight"] for point in plan.grid],
                         list(config.grids[task_name][arm]))

  def test_bad_config_names_the_field_before_training(self):
    config = flagship_config.get_config("smoke")
    config.arms = "plain,ablate"
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    with self.assertRaisesRegex(ConfigError, r"config\.arms='plain,ablate': unknown \['ablate'\]"):
      block_vs_reshape.run(config, workdir)
    config.arms = "plain"
    config.grids.decoy_digits.explanation = (-1.0,)
    with self.assertRaisesRegex(ConfigError, r"config\.grids\.decoy_digits\.explanation=\(-1\.0,\)"):
      block_vs_reshape.run(config, workdir)
    self.assertFalse(os.path.exists(workdir))

  def test_examples_needed_interpolates_in_log_size(self):
    sizes = np.asarray([10.0, 100.0, 1000.0])
    accuracy = np.asarray([0.5, 0.7, 0.9])
    self.assertAlmostEqual(_sample_efficiency.examples_needed(sizes, accuracy, 0.8), np.sqrt(1e5))
    self.assertEqual(_sample_efficiency.examples_needed(sizes, accuracy, 0.5), 10.0)
    self.assertIsNone(_sample_efficiency.examples_needed(sizes, accuracy, 0.95))

  def test_criteria_verdicts_follow_the_intervals(self):
    def arm(name, ood, decodable=0.5):
      ood = np.asarray(ood, np.float64)
      return _results.ArmResult(
          task="t", arm=name, family=block_vs_reshape.FAMILIES[name], grid=[{}], chosen=0,
          validation=[analysis.mean_interval(ood)], seeds=list(range(len(ood))),
          final={"eval/ood/accuracy": ood, "decodability/h": np.full(len(ood), decodable),
                 "decodability_chance/h": np.full(len(ood), 0.1)}, curves={})
    seeds_noise = np.asarray([0.0, 0.01, -0.01, 0.005, -0.005])
    results = [arm("oracle", 0.95 + seeds_noise), arm("ablate_fixed", 0.60 + seeds_noise),
               arm("explanation", 0.93 + seeds_noise)]
    verdicts = [criterion.outcome for criterion in _criteria.evaluate_all(results)]
    self.assertEqual(verdicts, [analysis.HOLDS, analysis.HOLDS, analysis.HOLDS])
    results = [arm("oracle", 0.95 + seeds_noise), arm("ablate_fixed", 0.90 + seeds_noise, 0.102),
               arm("explanation", 0.70 + seeds_noise)]
    verdicts = [criterion.outcome for criterion in _criteria.evaluate_all(results)]
    self.assertEqual(verdicts, [analysis.FAILS, analysis.FAILS, analysis.FAILS])


if __name__ == "__main__":
  absltest.main()
