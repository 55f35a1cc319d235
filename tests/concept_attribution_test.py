"""The concept-attribution experiment end to end on the smoke preset: every arm runs, the report's
numbers and criteria come from the run's own files (the expected verdicts recomputed here from the
files with NumPy and SciPy, not with the judges' code), the foundation's contract holds, and the
planted tests, on 16 seeds with the style in the fine-tuning data and 16 without it (the planted
setting), paired by seed:

* the issue's planted check on the signed attribution (the first-order change of the features'
  codes): without the style, the style features' attribution is not above the random-feature
  level (the random control group's, and the null level), while with the style it is above the
  random control group's (so the check can fail);
* on the unsigned span shares the literal check is not met at smoke size (the oracle's style
  share is above its null level: an update may move along the style span to lower it, and an
  unsigned share counts that too); what is asserted of them is that the style's excess over the
  null level is higher with the style in the data than without.

One run of the smoke preset serves every test (mostly compilation), and one more program trains
the planted tests' grid."""

import json
import math
import os
import tempfile

from absl.testing import absltest
import numpy as np
from scipy import stats

from configs import concept_attribution as experiment_config
from landscape import concept_attribution
from landscape import training
from landscape.concept_attribution import _arms
from landscape.concept_attribution import _run
from landscape.concept_attribution import _setting
from landscape.training import ConfigError
from landscape.training import read_jsonl

SITE = "blocks.0.resid_post"
HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"


def _interval(values):
  """(mean, low, high): the 95% t-interval of ``values`` (SciPy)."""
  values = np.asarray(values, np.float64)
  half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
  return values.mean(), values.mean() - half, values.mean() + half


def _at_most(values, bound):
  _, low, high = _interval(values)
  return HOLDS if high <= bound else FAILS if low > bound else INCONCLUSIVE


def _at_least(values, bound):
  _, low, high = _interval(values)
  return HOLDS if low >= bound else FAILS if high < bound else INCONCLUSIVE


def _inside(values, low_bound, high_bound):
  _, low, high = _interval(values)
  if low >= low_bound and high <= high_bound:
    return HOLDS
  return FAILS if high < low_bound or low > high_bound else INCONCLUSIVE


def _both(*outcomes):
  return FAILS if FAILS in outcomes else HOLDS if set(outcomes) == {HOLDS} else INCONCLUSIVE


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

  def masks_from_files(self) -> _setting.GroupMasks:
    """The feature groups as the run saved them in sae/features.json, as (F,) masks."""
    with open(os.path.join(self.workdir, "sae", "features.json")) as handle:
      groups = json.load(handle)["groups"]
    masks = {name: np.isin(np.arange(self.config.sae.d_sae), groups[name])
             for name in ("style", "skill", "random")}
    return _setting.GroupMasks(**masks, other=~(masks["style"] | masks["skill"]))

  def arm_files(self, arm, point=None):
    """From the arm's job's files: (final metrics of its runs, evaluation rows, transform rows,
    the run indices), the runs found by the arm's index and the point's hyper-parameters."""
    job = concept_attribution.ARM_REGISTRY[arm].job
    job_dir = os.path.join(self.workdir, "arms", job)
    with open(os.path.join(job_dir, "summary.json")) as handle:
      summary = json.load(handle)
    wanted = {"arm": concept_attribution.ARMS.index(arm), **(point or {})}
    runs = [index for index, run in enumerate(summary["runs"])
            if all(np.isclose(run[name], value) for name, value in wanted.items())]
    self.assertLen(runs, self.config.num_seeds, (arm, point))
    rows = read_jsonl(os.path.join(job_dir, "metrics.jsonl"))
    final = {name: np.asarray(value)[runs] for name, value in summary.items()
             if name.startswith(("eval/", "style/"))}
    evals = [row for row in rows if "eval/skill/accuracy" in row]
    logged = [row for row in rows if f"transform0/{SITE}/magnitude" in row]
    return final, evals, logged, runs

  def span_share_excess(self, arm):
    """Per run of ``arm``, from its logs: (style span share, the null level), averaged over the
    logged steps (the null level: the mean over the null groups, columns past the four sets)."""
    _, _, logged, runs = self.arm_files(arm)
    shares = np.stack([np.asarray(row[f"transform1/{SITE}/span_share"])[runs] for row in logged])
    return shares[..., 0].mean(0), shares[..., 4:].mean(-1).mean(0)

  def expected_verdicts(self):
    """Every pre-registered and post-hoc criterion's verdict, from the files, with the issue's
    numbers written here (not read from the criteria's data)."""
    masks = self.masks_from_files()
    plain, plain_evals, plain_logged, plain_runs = self.arm_files("plain")

    def acquired(arm, point, measure):
      final, evals, _, runs = self.arm_files(arm, point)
      if measure == "style/rate":
        return final[measure]
      return final[measure] - np.asarray(evals[0][measure])[runs]

    expected = {}
    # 1: style features in the top 5 by summed squared magnitude up to step 50, in >= 80% of seeds;
    # over the site's writers (pre-registered) and over the stream's (declared, 1w).
    for name, metric in (("1", f"transform1/{SITE}/site_writer_magnitude"),
                         ("1w", f"transform0/{SITE}/magnitude")):
      magnitude = np.stack([np.asarray(row[metric])[plain_runs]
                            for row in plain_logged if row["step"] <= 50])
      top = np.argsort(-np.square(magnitude).sum(0), axis=-1, kind="stable")[:, :5]
      seeds_with = int(np.sum(masks.style[top].sum(-1) >= 3))
      expected[name] = HOLDS if seeds_with >= math.ceil(0.8 * self.config.num_seeds) else FAILS
    # S: plain's style share minus its null level, and minus the oracle's style share, paired,
    # each interval's lower end >= 0.
    style, null = self.span_share_excess("plain")
    oracle_style, _ = self.span_share_excess("oracle")
    expected["S"] = _both(_at_least(style - null, 0.0), _at_least(style - oracle_style, 0.0))
    suppress, random = ("suppress", {"style_gain": 0.0}), ("random_features", {"style_gain": 0.0})
    for suffix, measure in (("", "style/rate"), ("m", "style/margin")):
      learned = acquired("plain", None, measure)
      style = _at_most(acquired(*suppress, measure) - 0.5 * learned, 0.0)
      skill = _inside(self.arm_files(*suppress)[0]["eval/skill/accuracy"]
                      - plain["eval/skill/accuracy"], -0.02, 0.02)
      expected["2" + suffix] = _both(style, skill)
      tolerance = 0.1 * abs(learned.mean())
      expected["3" + suffix] = _inside(acquired(*random, measure) - learned, -tolerance, tolerance)
      effect = learned - acquired(*suppress, measure)
      effect_long = (acquired("plain_long", None, measure)
                     - acquired("suppress_long", {"style_gain": 0.0}, measure))
      expected["5" + suffix] = (INCONCLUSIVE if _interval(effect)[1] <= 0 else
                                _at_least(effect_long - 0.5 * effect, 0.0))
    # 4: first evaluation at or above the threshold; never: one interval past the end.
    def steps_to(arm):
      _, evals, _, runs = self.arm_files(arm)
      steps = np.array([row["step"] for row in evals])
      accuracy = np.stack([np.asarray(row["eval/skill/accuracy"])[runs] for row in evals])
      reached = accuracy >= self.config.skill_threshold
      censored = steps[-1] + (steps[1] - steps[0])
      return np.where(reached.any(0), steps[np.argmax(reached, 0)], censored), censored
    plain_steps, censored = steps_to("plain")
    amplify_steps, _ = steps_to("amplify")
    both_censored = np.any((plain_steps == censored) & (amplify_steps == censored))
    as_imputed = _at_least(plain_steps - amplify_steps, 1.0)
    plain_never, amplify_never = plain_steps == censored, amplify_steps == censored
    if both_censored:
      expected["4"] = INCONCLUSIVE
    elif amplify_never.any() or plain_never.any():
      # counted as never: amplify never -> fails; plain never -> holds only if every other seed
      # saves at least 1 step.
      finite = (plain_steps - amplify_steps)[~(plain_never | amplify_never)]
      never = (FAILS if amplify_never.any() else
               HOLDS if np.all(finite >= 1.0) else INCONCLUSIVE)
      expected["4"] = as_imputed if never == as_imputed else INCONCLUSIVE
    else:
      expected["4"] = as_imputed
    return expected

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
    with open(os.path.join(self.workdir, "summary.json")) as handle:
      summary = json.load(handle)
    saved = summary["criteria"] + summary["post_hoc_criteria"] + summary["declared_checks"]
    self.assertLen(summary["criteria"], 5)
    self.assertLen(summary["post_hoc_criteria"], 3)
    self.assertLen(summary["declared_checks"], 2)
    expected = self.expected_verdicts()
    self.assertEqual({verdict["name"].split(".")[0]: verdict["verdict"] for verdict in saved},
                     expected)
    for verdict in saved:
      self.assertIn(verdict["sentence"], self.report)
    # The post-hoc judgements follow the pre-registered ones, declared as such.
    self.assertLess(self.report.index(summary["criteria"][-1]["sentence"]),
                    self.report.index("Post hoc, declared"))
    self.assertLess(self.report.index("Post hoc, declared"),
                    self.report.index(summary["post_hoc_criteria"][0]["sentence"]))
    # Criterion 2's printed interval is the one of the files' numbers.
    plain = self.arm_files("plain")[0]["style/rate"]
    suppress = self.arm_files("suppress", {"style_gain": 0.0})[0]["style/rate"]
    mean, low, high = _interval(suppress - 0.5 * plain)
    self.assertIn(f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]", summary["criteria"][1]["sentence"])
    # The table's style rate of plain is the mean of its runs' final values.
    self.assertIn(f"| plain | baseline | {np.mean(plain):.3f} [", self.report)
    # The declared check's numbers: plain's style span share minus its null level and minus the
    # oracle's, and the oracle's minus its own null level (the planted check), from the logs.
    style, null = self.span_share_excess("plain")
    oracle_style, oracle_null = self.span_share_excess("oracle")
    sentence = summary["declared_checks"][1]["sentence"]
    for difference in (style - null, style - oracle_style):
      mean, low, high = _interval(difference)
      self.assertIn(f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]", sentence)
    mean, low, high = _interval(oracle_style - oracle_null)
    self.assertAlmostEqual(summary["checks"]["oracle_over_null"]["mean"], mean, places=6)
    self.assertIn(f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]", self.report)
    # The planted check on the signed attribution: the oracle's style code change minus the random
    # control group's, from the logs.
    masks = self.masks_from_files()
    _, _, logged, runs = self.arm_files("oracle")
    summed = np.stack([np.asarray(row[f"transform2/{SITE}/code_change"])[runs]
                       for row in logged]).sum(0)
    mean, low, high = _interval(summed[:, masks.style].mean(-1) - summed[:, masks.random].mean(-1))
    saved = summary["checks"]["oracle_code_change_excess"]["over_random"]
    self.assertAlmostEqual(saved["mean"], mean, places=6)
    self.assertIn(f"the oracle {mean:+.4f} [{low:+.4f}, {high:+.4f}] / ", self.report)

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

  def planted_grid(self, metric):
    """``metric``'s logged values over the planted grid, per run: (styled, planted), each
    (T, 16, ...) with the runs in seed order. One program, trained on first use: the smoke budget
    with the style (rate 1) and without it (rate 0, the planted setting: the oracle's data), 16
    seeds each on the smoke base model and SAE. Each seed sees the same content at both rates
    (`style_rate_dataset`), so the two pair by seed."""
    grid_dir = os.path.join(self.workdir, "planted_grid")
    if not os.path.exists(os.path.join(grid_dir, "summary.json")):
      setting = _setting.build_setting(self.config, self.workdir)
      plan = _arms.plan_job("oracle", setting, self.config)
      loop = _run.loop_config(self.config, "oracle")
      loop.num_seeds = 16
      training.train(loop, grid_dir, model=setting.model, objective=plan.objective,
                     optimizer=plan.optimizer,
                     dataset=_setting.style_rate_dataset(self.config, setting.world),
                     hparam_grid=[{"style_rate": 1.0}, {"style_rate": 0.0}],
                     initial_params=setting.base_params, progress=False)
    with open(os.path.join(grid_dir, "summary.json")) as handle:
      runs = json.load(handle)["runs"]
    values = np.stack([np.asarray(row[metric]) for row in
                       read_jsonl(os.path.join(grid_dir, "metrics.jsonl")) if metric in row])
    rate = np.array([run["style_rate"] for run in runs])
    seed = np.array([run["seed"] for run in runs])
    return tuple(values[:, rate == rate_value][:, np.argsort(seed[rate == rate_value])]
                 for rate_value in (1.0, 0.0))

  def test_planted_no_signed_style_attribution_above_random_features(self):
    # Per run: the style features' code change summed over training, their mean per feature,
    # minus the random control group's and minus the null level (the mean over the null groups).
    groups = self.masks_from_files()
    with open(os.path.join(self.workdir, "sae", "features.json")) as handle:
      null_groups = np.asarray(json.load(handle)["groups"]["null_groups"])
    styled, planted = (summed.sum(0) for summed in
                       self.planted_grid(f"transform2/{SITE}/code_change"))

    def excess(summed):
      style = summed[:, groups.style].mean(-1)
      return (style - summed[:, groups.random].mean(-1),
              style - summed[:, null_groups].mean(-1).mean(-1))

    for name, planted_excess in zip(("random control", "null level"), excess(planted)):
      # The check: without the style, no style attribution above the random-feature level
      # (asserted as the whole paired interval at or below it; smoke size gives it below).
      self.assertLessEqual(_interval(planted_excess)[2], 0.0, (name, planted_excess))
    # It can fail: with the style in the data, the same measure is above the random control's.
    self.assertGreater(_interval(excess(styled)[0])[1], 0.0, styled)

  def test_planted_style_share_rises_with_the_style_in_the_data(self):
    # Per run: the style's span share above the null level (the mean of the null groups',
    # matched on activation), averaged over the logged steps.
    styled, planted = (shares[..., 0].mean(0) - shares[..., 4:].mean(-1).mean(0) for shares in
                       self.planted_grid(f"transform1/{SITE}/span_share"))

    def above(first, second):
      """The paired 95% interval of first minus second lies above zero."""
      return _interval(first - second)[1] > 0

    self.assertTrue(above(styled, planted), (styled, planted))
    # The check can fail: the planted runs against themselves on other seeds are not above.
    self.assertFalse(above(planted[:8], planted[8:]), planted)


if __name__ == "__main__":
  absltest.main()
