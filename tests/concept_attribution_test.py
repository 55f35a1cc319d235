"""The concept-attribution experiment end to end on the smoke preset: every arm runs, the report's
numbers and criteria come from the run's own files, the foundation's contract holds, and in the
planted setting (fine-tuning without the style: the oracle arm) the style is not attributed above
the random features' level. One run of the smoke preset serves every test (mostly compilation)."""

import json
import os
import tempfile

from absl.testing import absltest
import numpy as np

from configs import concept_attribution as experiment_config
from landscape import concept_attribution
from landscape.concept_attribution import _arms
from landscape.concept_attribution import _criteria
from landscape.concept_attribution import _report
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

  def masks_from_files(self) -> dict[str, np.ndarray]:
    """The feature groups as the run saved them in sae/features.json, as (F,) masks."""
    with open(os.path.join(self.workdir, "sae", "features.json")) as handle:
      groups = json.load(handle)["groups"]
    masks = {name: np.isin(np.arange(self.config.sae.d_sae), groups[name])
             for name in ("style", "skill", "random")}
    masks["other"] = ~(masks["style"] | masks["skill"])
    return masks

  def test_every_arm_ran_and_is_reported(self):
    for arm in concept_attribution.ARMS:
      job = concept_attribution.ARM_REGISTRY[arm].job
      with open(os.path.join(self.workdir, "arms", job, "summary.json")) as handle:
        summary = json.load(handle)
      steps = _arms.arm_steps(arm, self.config)
      self.assertEqual(summary["step"], steps, arm)
      grid = concept_attribution.ARM_REGISTRY[arm].grid(self.config)
      points = _arms.runs_of(summary["runs"], arm, self.config)
      self.assertLen(points, len(grid), arm)
      for point, runs in points:  # each point of the arm's grid trained with every seed
        self.assertEqual([summary["runs"][index]["seed"] for index in runs],
                         [self.config.seed + seed for seed in range(self.config.num_seeds)],
                         (arm, point))
      self.assertLen(summary["features/mean_code"][0], self.config.sae.d_sae, arm)
      self.assertIn(f"| {arm}", self.report)
      self.assertIn(f"- `{arm}` ({concept_attribution.ARM_REGISTRY[arm].family}): ", self.report)
      rows = read_jsonl(os.path.join(self.workdir, "arms", job, "metrics.jsonl"))
      logged = [row for row in rows if f"transform0/{SITE}/magnitude" in row]
      self.assertLen(logged, steps // self.config.attribution_log_every)
    # Jobs: one directory per training call, every run of it some arm's.
    jobs = sorted(os.listdir(os.path.join(self.workdir, "arms")))
    self.assertEqual(jobs, sorted(concept_attribution.JOB_REGISTRY))
    for job in jobs:
      with open(os.path.join(self.workdir, "arms", job, "summary.json")) as handle:
        runs = json.load(handle)["runs"]
      claimed = [index for arm in _arms.job_arms(job)
                 for _, indices in _arms.runs_of(runs, arm, self.config) for index in indices]
      self.assertEqual(sorted(claimed), list(range(len(runs))), job)
    for figure in ("attribution.png", "sources.png", "style_and_skill.png"):
      self.assertGreater(os.path.getsize(os.path.join(self.workdir, figure)), 10_000, figure)
    self.assertIn("Command: `smoke test`", self.report)

  def test_criteria_sentences_come_from_the_runs_own_files(self):
    results = _results.load_results(self.workdir, concept_attribution.ARMS, SITE, self.config)
    masks = self.masks_from_files()
    evidence = _criteria.Evidence(results, masks, self.config.skill_threshold)
    verdicts = _criteria.evaluate_all(evidence)
    post_hoc = _criteria.evaluate_all(evidence, concept_attribution.POST_HOC)
    self.assertLen(verdicts, 5)
    self.assertLen(post_hoc, 3)
    with open(os.path.join(self.workdir, "summary.json")) as handle:
      summary = json.load(handle)
    for verdict, saved in zip(verdicts + post_hoc,
                              summary["criteria"] + summary["post_hoc_criteria"]):
      self.assertNotEqual(verdict.outcome, _criteria.NOT_RUN)
      self.assertIn(verdict.sentence, self.report)
      self.assertEqual(verdict.outcome, saved["verdict"])
      self.assertEqual(verdict.name, saved["name"])
    # The post-hoc judgements follow the pre-registered ones, declared as such.
    self.assertLess(self.report.index(verdicts[-1].sentence),
                    self.report.index("Post hoc, declared"))
    self.assertLess(self.report.index("Post hoc, declared"), self.report.index(post_hoc[0].sentence))
    # The table's style rate of plain is the mean of its runs' final values.
    plain = _results.find(results, "plain")
    self.assertIn(f"| plain | baseline | {np.mean(plain.final[_results.STYLE_RATE]):.3f} [",
                  self.report)

  def test_rerun_reads_back_and_a_different_setting_is_refused(self):
    written = {job: os.stat(os.path.join(self.workdir, "arms", job, "metrics.jsonl")).st_mtime_ns
               for job in concept_attribution.JOB_REGISTRY}
    again = concept_attribution.run(self.config, self.workdir, command="smoke test")
    for job, mtime in written.items():  # read back, not trained again
      self.assertEqual(
          os.stat(os.path.join(self.workdir, "arms", job, "metrics.jsonl")).st_mtime_ns, mtime, job)
    self.assertEqual(again["criteria"], self.summary["criteria"])
    self.assertEqual(again["arms"], self.summary["arms"])
    changed = experiment_config.get_config("smoke")
    changed.unlock()
    changed.grids.amplify = (2.0,)
    changed.arms = "amplify"
    with self.assertRaisesRegex(ConfigError, "grids"):
      concept_attribution.run(changed, self.workdir)
    changed.grids.amplify = self.config.grids.amplify
    changed.sae.k = self.config.sae.k + 1
    with self.assertRaisesRegex(ConfigError, "sae"):
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

  def test_planted_no_style_attribution_above_random_features(self):
    # The planted setting: `oracle` fine-tunes the same base model on the same examples without
    # the style (the "planted" preset's fine-tuning data), attributed along the same SAE features.
    results = _results.load_results(self.workdir, concept_attribution.ARMS, SITE, self.config)
    masks = self.masks_from_files()
    planted = _report.attribution_checks(results, masks, arm="oracle")
    styled = _report.attribution_checks(results, masks, arm="plain")
    # Decoder-row shares: the style group's is not above the random group's (paired interval).
    self.assertLessEqual(planted.style_over_random.low, 0.0)
    # Signed code change: the style features (active on pirate text only) hardly move without
    # the style, and move more with it: the statistic can tell the two settings apart.
    by_group = planted.code_change_by_group
    self.assertLess(by_group["style"].mean, by_group["random"].mean + 0.005)
    self.assertGreater(styled.code_change_by_group["style"].mean, by_group["style"].mean)


if __name__ == "__main__":
  absltest.main()
