"""The concept-attribution experiment end to end on the smoke preset: every arm runs, the report's
numbers and criteria come from the run's own files, and the foundation's contract holds."""

import json
import os
import tempfile

from absl.testing import absltest
import numpy as np

from configs import concept_attribution as experiment_config
from landscape import concept_attribution
from landscape.concept_attribution import _criteria
from landscape.concept_attribution import _results
from landscape.training import ConfigError
from landscape.training import read_jsonl

SITE = "blocks.0.resid_post"


class SmokeTest(absltest.TestCase):
  """One run of the smoke preset, every arm, through the binary's ``run``."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = tempfile.mkdtemp()
    cls.config = experiment_config.get_config("smoke")
    cls.summary = concept_attribution.run(cls.config, cls.workdir, command="smoke test")
    with open(os.path.join(cls.workdir, "report.md")) as handle:
      cls.report = handle.read()

  def test_every_arm_ran_and_is_reported(self):
    for arm in concept_attribution.ARMS:
      with open(os.path.join(self.workdir, "arms", arm, "summary.json")) as handle:
        summary = json.load(handle)
      factor = concept_attribution.ARM_REGISTRY[arm].steps_factor(self.config)
      self.assertEqual(summary["step"], self.config.steps * factor, arm)
      grid = concept_attribution.ARM_REGISTRY[arm].grid(self.config)
      self.assertLen(summary["style/rate"], self.config.num_seeds * len(grid), arm)
      self.assertLen(summary["features/mean_code"][0], self.config.sae.d_sae, arm)
      self.assertIn(f"| {arm}", self.report)
      rows = read_jsonl(os.path.join(self.workdir, "arms", arm, "metrics.jsonl"))
      logged = [row for row in rows if f"transform0/{SITE}/magnitude" in row]
      self.assertLen(logged, self.config.steps * factor // self.config.attribution_log_every)
    for figure in ("attribution.png", "sources.png", "style_and_skill.png"):
      self.assertGreater(os.path.getsize(os.path.join(self.workdir, figure)), 10_000, figure)
    self.assertIn("Command: `smoke test`", self.report)

  def test_criteria_sentences_come_from_the_runs_own_files(self):
    results = _results.load_results(self.workdir, concept_attribution.ARMS, SITE)
    with open(os.path.join(self.workdir, "sae", "features.json")) as handle:
      groups = json.load(handle)["groups"]
    d_sae = self.config.sae.d_sae
    masks = {}
    for name in ("style", "skill", "random"):
      masks[name] = np.isin(np.arange(d_sae), groups[name])
    masks["other"] = ~(masks["style"] | masks["skill"])
    verdicts = _criteria.evaluate_all(
        _criteria.Evidence(results, masks, self.config.skill_threshold))
    self.assertLen(verdicts, 5)
    with open(os.path.join(self.workdir, "summary.json")) as handle:
      summary = json.load(handle)
    for verdict, saved in zip(verdicts, summary["criteria"]):
      self.assertNotEqual(verdict.outcome, _criteria.NOT_RUN)
      self.assertIn(verdict.sentence, self.report)
      self.assertEqual(verdict.outcome, saved["verdict"])
    # The table's style rate of plain is the mean of its runs' final values.
    plain = _results.find(results, "plain")
    self.assertIn(f"| plain | baseline | {np.mean(plain.final[_results.STYLE_RATE]):.3f} [",
                  self.report)

  def test_rerun_reads_back_and_a_different_setting_is_refused(self):
    again = concept_attribution.run(self.config, self.workdir, command="smoke test")
    self.assertEqual(again["criteria"], self.summary["criteria"])
    self.assertEqual(again["arms"], self.summary["arms"])
    changed = experiment_config.get_config("smoke")
    changed.unlock()
    changed.grids.amplify = (2.0,)
    changed.arms = "amplify"
    with self.assertRaisesRegex(ConfigError, "grids"):
      concept_attribution.run(changed, self.workdir)

  def test_bad_config_is_refused_before_training(self):
    config = experiment_config.get_config("smoke")
    config.unlock()
    config.arms = "plain,nonsense"
    with self.assertRaisesRegex(ConfigError, "nonsense"):
      concept_attribution.run(config, tempfile.mkdtemp())
    config = experiment_config.get_config("smoke")
    config.unlock()
    config.roles = "writes,sideways"
    with self.assertRaisesRegex(ConfigError, "config.roles"):
      concept_attribution.run(config, tempfile.mkdtemp())


class PlantedTest(absltest.TestCase):
  """The style absent from the fine-tuning data: no style attribution above the random level."""

  def test_no_style_attribution_above_random_features(self):
    config = experiment_config.get_config("planted_smoke")
    config.unlock()
    config.arms = "plain"
    config.num_seeds = 4
    workdir = tempfile.mkdtemp()
    summary = concept_attribution.run(config, workdir)
    checks = summary["checks"]
    # Decoder-row shares: the style group's is not above the random group's (paired interval).
    self.assertLessEqual(checks["style_over_random"]["low"], 0.0)
    # Signed code change: the style features (active on pirate text only) hardly move; with the
    # style present they rise by ~0.03 per feature in this preset, above the random features.
    by_group = checks["code_change_by_group"]
    self.assertLess(by_group["style"]["mean"], by_group["random"]["mean"] + 0.005)
    self.assertEqual([verdict["verdict"] for verdict in summary["criteria"]][1:],
                     [_criteria.NOT_RUN] * 4)


if __name__ == "__main__":
  absltest.main()
