"""The flagship's criteria as data, its report from saved files, and the command it names."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import types
from unittest import mock

import ml_collections
import numpy as np
from absl.testing import absltest
from scipy import stats

from configs import block_vs_reshape as flagship_config
from landscape import analysis
from landscape import block_vs_reshape
from landscape import cli
from landscape import training
from landscape.block_vs_reshape import _criteria
from landscape.block_vs_reshape import _report
from landscape.block_vs_reshape import _results
from landscape.block_vs_reshape import _run
from landscape.sites import BadInputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OOD = "eval/ood/accuracy"


def _interval(values):
  """Mean and 95% t-interval in float64: the reference for the criteria's estimates."""
  values = np.asarray(values, np.float64)
  half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
  return values.mean(), values.mean() - half, values.mean() + half


def _arm(name, ood, *, chosen=None, decodability=None, chance=0.1, seeds=None):
  """An ArmResult with the given per-seed OOD accuracy and decodability per site."""
  ood = np.asarray(ood, np.float64)
  final = {OOD: ood}
  for site, values in (decodability or {}).items():
    final[f"decodability/{site}"] = np.asarray(values, np.float64)
    final[f"decodability_chance/{site}"] = np.full(len(ood), chance)
  return _results.ArmResult(
      task="decoy_digits", arm=name, family=block_vs_reshape.FAMILIES[name], grid=[chosen or {}],
      chosen=0, validation=[analysis.mean_interval(ood)],
      seeds=list(range(len(ood))) if seeds is None else seeds, final=final, curves={})


def _by_name(name):
  return next(criterion for criterion in _criteria.PREREGISTERED if criterion.name == name)


RESHAPING_BEATS_BLOCKING = _by_name("reshaping beats blocking")
CLOSE_TO_ORACLE = _by_name("reshaping comes close to the oracle")
STAYS_DECODABLE = _by_name("blocked concept stays decodable")
# Issue 12's criterion, as a user would add it: one more value, no new code (the library's own is
# `_criteria.OVER_ORACLE`; this one's sentence is shorter).
OVER_ORACLE = _criteria.Criterion(
    name="blocked network decodes more than the oracle",
    first=_criteria.best("blocking", _criteria.DECODABILITY),
    second=_criteria.arm("oracle", _criteria.DECODABILITY),
    direction=_criteria.AT_LEAST, bound=0.01,
    statement="best block's decodability minus the oracle's {symbol} {bound:g} at some site",
    sentence="{first} minus the oracle: {per_site}; highest at `{site}`, {direction} {bound:.2f}: "
             "**{verdict}**.")


class CriteriaTest(absltest.TestCase):

  def test_paired_difference_holds_and_the_sentence_is_its_numbers(self):
    results = [_arm("explanation", [0.80, 0.84, 0.86], chosen={"weight": 0.3}),
               _arm("ablate_fixed", [0.60, 0.62, 0.70], chosen={"site": 1.0})]
    verdict = _criteria.evaluate(RESHAPING_BEATS_BLOCKING, results)
    mean, low, high = _interval([0.20, 0.22, 0.16])  # 0.193 [0.117, 0.269]: all of it >= 0.10
    self.assertEqual(verdict.outcome, analysis.HOLDS)
    self.assertAlmostEqual(verdict.estimate.mean, mean, places=12)
    self.assertAlmostEqual(verdict.estimate.low, low, places=12)
    self.assertAlmostEqual(verdict.estimate.high, high, places=12)
    self.assertEqual(verdict.estimate.n, 3)
    self.assertEqual(verdict.sentence, (
        "Best reshaping arm `explanation` (weight=0.3) minus best blocking arm `ablate_fixed` "
        "(site=1), OOD accuracy: +0.193 [+0.117, +0.269] (95% CI over 3 paired seeds); "
        "pre-registered at least 0.10: **holds**."))
    self.assertEqual(verdict.as_dict()["verdict"], "holds")

  def test_at_most_fails_when_the_whole_interval_is_above_the_bound(self):
    results = [_arm("oracle", [0.95, 0.96, 0.97]), _arm("explanation", [0.80, 0.84, 0.86])]
    verdict = _criteria.evaluate(CLOSE_TO_ORACLE, results)
    _, low, _ = _interval([0.15, 0.12, 0.11])  # 0.127 [0.075, 0.178]: all of it > 0.05
    self.assertGreater(low, 0.05)
    self.assertEqual(verdict.outcome, analysis.FAILS)
    self.assertEqual(verdict.sentence, (
        "Oracle minus best reshaping arm `explanation`, OOD accuracy: +0.127 [+0.075, +0.178] (95% "
        "CI over 3 paired seeds); pre-registered at most 0.05: **fails**."))

  def test_inconclusive_when_the_interval_straddles_the_bound(self):
    results = [_arm("oracle", [0.90, 0.95, 0.85]), _arm("explanation", [0.86, 0.86, 0.86])]
    verdict = _criteria.evaluate(CLOSE_TO_ORACLE, results)  # 0.040 [-0.084, +0.164] against 0.05
    self.assertEqual(verdict.outcome, analysis.INCONCLUSIVE)
    self.assertIn("+0.040 [-0.084, +0.164]", verdict.sentence)

  def test_an_arm_that_did_not_run_cannot_be_judged(self):
    results = [_arm("explanation", [0.8, 0.9]), _arm("plain", [0.5, 0.6])]
    verdict = _criteria.evaluate(CLOSE_TO_ORACLE, results)
    self.assertEqual(verdict.outcome, _criteria.NOT_RUN)
    self.assertIsNone(verdict.estimate)
    self.assertEqual(verdict.sentence,
                     "reshaping comes close to the oracle: not judged, the oracle was not run.")
    verdict = _criteria.evaluate(RESHAPING_BEATS_BLOCKING, [_arm("plain", [0.5, 0.6])])
    self.assertEqual(verdict.sentence, "reshaping beats blocking: not judged, a reshaping arm and "
                     "a blocking arm were not run.")
    verdict = _criteria.evaluate(STAYS_DECODABLE, results)
    self.assertEqual(verdict.sentence,
                     "blocked concept stays decodable: not judged, a blocking arm was not run.")

  def test_per_site_criterion_holds_at_some_site_and_reports_the_best_one(self):
    blocking = _arm("ablate_fixed", [0.6, 0.6, 0.6], chosen={"site": 0.0}, decodability={
        "hidden_0": [0.11, 0.12, 0.10], "hidden_1": [0.40, 0.42, 0.38]})
    verdict = _criteria.evaluate(STAYS_DECODABLE, [blocking])
    # hidden_0: 0.010 [-0.015, +0.035] straddles 0.01; hidden_1: 0.300 [0.250, 0.350] holds.
    mean, low, high = _interval([0.30, 0.32, 0.28])
    self.assertEqual(verdict.outcome, analysis.HOLDS)
    self.assertAlmostEqual(verdict.estimate.mean, mean, places=12)
    self.assertAlmostEqual(verdict.estimate.low, low, places=12)
    self.assertAlmostEqual(verdict.estimate.high, high, places=12)
    self.assertEqual(verdict.sentence, (
        "After the best blocking arm `ablate_fixed` (site=0), a fresh linear probe reads the "
        "shortcut concept above chance at some site (held-out accuracy minus chance, 95% CI: "
        "`hidden_0` +0.010 [-0.015, +0.035]; `hidden_1` +0.300 [+0.250, +0.350]; highest at "
        "`hidden_1`); pre-registered: decodable above chance (by at least 0.01) at some site: "
        "**holds**."))

  def test_per_site_criterion_fails_only_when_every_site_fails(self):
    decodability = {"hidden_0": [0.09, 0.10, 0.095], "hidden_1": [0.105, 0.1, 0.1]}
    blocking = _arm("grad_mask", [0.6, 0.6, 0.6], decodability=decodability)
    self.assertEqual(_criteria.evaluate(STAYS_DECODABLE, [blocking]).outcome, analysis.FAILS)
    decodability["hidden_1"] = [0.105, 0.1, 0.13]  # 0.012 [-0.027, 0.051]: straddles
    blocking = _arm("grad_mask", [0.6, 0.6, 0.6], decodability=decodability)
    self.assertEqual(_criteria.evaluate(STAYS_DECODABLE, [blocking]).outcome,
                     analysis.INCONCLUSIVE)

  def test_a_new_criterion_is_one_more_value(self):
    results = [
        _arm("oracle", [0.9, 0.9, 0.9], decodability={"h": [0.20, 0.25, 0.30],
                                                     "k": [0.5, 0.5, 0.5]}),
        _arm("grad_mask", [0.5, 0.5, 0.5], decodability={"h": [0.50, 0.57, 0.54],
                                                        "k": [0.5, 0.52, 0.48]}),
        _arm("explanation", [0.8, 0.8, 0.8])]
    verdicts = _criteria.evaluate_all(results, _criteria.PREREGISTERED + (OVER_ORACLE,))
    self.assertLen(verdicts, 4)
    self.assertEqual(verdicts[:3], _criteria.evaluate_all(results))
    mean, low, high = _interval([0.30, 0.32, 0.24])
    self.assertEqual(verdicts[3].outcome, analysis.HOLDS)
    self.assertAlmostEqual(verdicts[3].estimate.mean, mean, places=12)
    self.assertEqual(verdicts[3].sentence,
                     f"`grad_mask` minus the oracle: `h` +{mean:.3f} [+{low:.3f}, +{high:.3f}]; "
                     "`k` +0.000 [-0.050, +0.050]; highest at `h`, at least 0.01: **holds**.")
    self.assertEqual(OVER_ORACLE.describe(),
                     "best block's decodability minus the oracle's >= 0.01 at some site")

  def test_a_new_statistic_is_one_function(self):
    def ratio(first, second):
      return analysis.mean_interval(first / second)
    criterion = _criteria.Criterion(
        name="reshaping keeps most of the oracle", first=_criteria.best("reshaping", OOD),
        second=_criteria.arm("oracle", OOD), direction=_criteria.AT_LEAST, bound=0.9,
        statement="", sentence="{estimate:.2f}: **{verdict}**", statistic=ratio)
    results = [_arm("oracle", [0.8, 1.0]), _arm("steering", [0.76, 0.95])]
    verdict = _criteria.evaluate(criterion, results)
    self.assertEqual(verdict.sentence, "0.95 [0.95, 0.95]: **holds**")

  def test_at_most_per_site_reports_the_lowest_site(self):
    criterion = _criteria.Criterion(
        name="forgotten", first=_criteria.best("blocking", _criteria.DECODABILITY),
        second=_criteria.best("blocking", _criteria.DECODABILITY_CHANCE),
        direction=_criteria.AT_MOST, bound=0.05, statement="", sentence="`{site}` **{verdict}**")
    blocking = _arm("grad_mask", [0.5, 0.5], decodability={"a": [0.5, 0.6], "b": [0.11, 0.11]})
    self.assertEqual(_criteria.evaluate(criterion, [blocking]).sentence, "`b` **holds**")

  def test_the_preregistered_statements_are_the_reports_list(self):
    self.assertEqual(
        "; ".join(criterion.describe() for criterion in _criteria.PREREGISTERED),
        "best reshaping minus best blocking OOD accuracy >= 0.1; oracle minus best reshaping "
        "<= 0.05; the blocked concept decodable above chance (by at least 0.01) at some site after "
        "the best blocking arm")

  def test_bad_criteria_and_unpaired_arms_are_refused(self):
    with self.assertRaisesRegex(BadInputError, r"arm='oracle', family='blocking'"):
      _criteria.Operand(OOD, arm="oracle", family="blocking")
    with self.assertRaisesRegex(BadInputError, r"direction='above'"):
      _criteria.Criterion("x", _criteria.arm("oracle", OOD), _criteria.arm("plain", OOD),
                          direction="above", bound=0.0, statement="", sentence="")
    with self.assertRaisesRegex(BadInputError, r"either both are per site or neither"):
      _criteria.Criterion("x", _criteria.arm("oracle", _criteria.DECODABILITY),
                          _criteria.arm("plain", OOD), direction=_criteria.AT_LEAST, bound=0.0,
                          statement="", sentence="")
    results = [_arm("oracle", [0.9, 0.9]), _arm("explanation", [0.8, 0.8], seeds=[3, 4])]
    with self.assertRaisesRegex(BadInputError, r"different seeds \(\[0, 1\] vs \[3, 4\]\)"):
      _criteria.evaluate(CLOSE_TO_ORACLE, results)

  def test_judge_any(self):
    holds, fails, inconclusive = analysis.HOLDS, analysis.FAILS, analysis.INCONCLUSIVE
    self.assertEqual(analysis.judge_any([fails, inconclusive, holds]), holds)
    self.assertEqual(analysis.judge_any([fails, fails]), fails)
    self.assertEqual(analysis.judge_any([fails, inconclusive]), inconclusive)
    with self.assertRaises(BadInputError):
      analysis.judge_any([])


def _write_arm(workdir, task, arm, runs, metrics):
  """An arm's summary.json and metrics.jsonl as `training.train` writes them: per-run lists."""
  arm_dir = os.path.join(workdir, task, arm)
  os.makedirs(arm_dir)
  with open(os.path.join(arm_dir, "summary.json"), "w") as handle:
    json.dump(dict(metrics, runs=runs, step=10), handle)
  with open(os.path.join(arm_dir, "metrics.jsonl"), "w") as handle:
    for step, scale in ((0, 0.5), (10, 1.0)):
      handle.write(json.dumps(dict({name: [scale * value for value in values]
                                    for name, values in metrics.items()}, step=step)) + "\n")


def _fake_run(workdir):
  """decoy_digits with five arms, two seeds each; ablate_fixed and explanation have two grid points.

  Chosen on validation: ablate_fixed site=1 and explanation weight=0.3 (the second grid points).
  """
  def metrics(ood, validation, decodability):
    count = len(ood)
    return {"eval/ood/accuracy": ood, "eval/id/accuracy": [0.9] * count,
            "eval/ood/shortcut": [0.1] * count, "eval/val_ood/accuracy": validation,
            "decodability/hidden_0": decodability, "decodability_chance/hidden_0": [0.1] * count}
  single = [{"seed": 0}, {"seed": 1}]
  _write_arm(workdir, "decoy_digits", "plain", single, metrics([0.5, 0.6], [0.5, 0.6], [0.3, 0.4]))
  _write_arm(workdir, "decoy_digits", "oracle", single,
             metrics([0.9, 0.92], [0.9, 0.9], [0.2, 0.25]))
  grid = [{"seed": 0, "site": 0.0}, {"seed": 1, "site": 0.0}, {"seed": 0, "site": 1.0},
          {"seed": 1, "site": 1.0}]
  _write_arm(workdir, "decoy_digits", "ablate_fixed", grid,
             metrics([0.1, 0.1, 0.6, 0.66], [0.1, 0.1, 0.6, 0.6], [0.1, 0.1, 0.5, 0.52]))
  _write_arm(workdir, "decoy_digits", "grad_mask", single,
             metrics([0.5, 0.5], [0.5, 0.5], [0.3, 0.3]))
  weights = [{"seed": 0, "weight": 0.1}, {"seed": 1, "weight": 0.1}, {"seed": 0, "weight": 0.3},
             {"seed": 1, "weight": 0.3}]
  _write_arm(workdir, "decoy_digits", "explanation", weights,
             metrics([0.2, 0.2, 0.85, 0.93], [0.2, 0.2, 0.8, 0.8], [0.2, 0.2, 0.3, 0.3]))
  return ["plain", "oracle", "ablate_fixed", "grad_mask", "explanation"]


class ReportTest(absltest.TestCase):
  """The report rendered from an arm's saved files alone."""

  def setUp(self):
    super().setUp()
    self.workdir = self.enter_context(tempfile.TemporaryDirectory())
    self.arms = _fake_run(self.workdir)
    self.config = ml_collections.ConfigDict(dict(num_seeds=2, criteria="exploratory"))

  def _write(self, **kwargs):
    summary = _report.write(self.config, self.workdir, tasks=["decoy_digits"], arms=self.arms,
                            sample_efficiency=None, seconds=12.0, **kwargs)
    with open(os.path.join(self.workdir, "report.md")) as handle:
      return summary, handle.read()

  def test_report_says_the_verdicts_of_the_saved_numbers(self):
    summary, report = self._write(command="python -m experiments.block_vs_reshape --workdir=w")
    self.assertIn("Command: `python -m experiments.block_vs_reshape --workdir=w`", report)
    # Best reshaping: explanation (weight=0.3), OOD [0.85, 0.93]; best blocking: ablate_fixed
    # (site=1), [0.60, 0.66]: paired differences 0.25 and 0.27.
    mean, low, high = _interval([0.25, 0.27])
    self.assertIn(f"- Best reshaping arm `explanation` (weight=0.3) minus best blocking arm "
                  f"`ablate_fixed` (site=1), OOD accuracy: +{mean:.3f} [+{low:.3f}, +{high:.3f}] "
                  "(95% CI over 2 paired seeds); pre-registered at least 0.10: **holds**.", report)
    # Oracle [0.90, 0.92] minus explanation: 0.05 and -0.01.
    mean, low, high = _interval([0.05, -0.01])
    self.assertIn(f"- Oracle minus best reshaping arm `explanation` (weight=0.3), OOD accuracy: "
                  f"+{mean:.3f} [{low:+.3f}, {high:+.3f}] (95% CI over 2 paired seeds); "
                  "pre-registered at most 0.05: **inconclusive**.", report)
    self.assertIn("(held-out accuracy minus chance, 95% CI: `hidden_0` +0.410 [+0.283, +0.537]; "
                  "highest at `hidden_0`)", report)
    self.assertIn("Criteria (pre-registered): best reshaping minus best blocking OOD accuracy >= "
                  "0.1; oracle minus best reshaping <= 0.05;", report)
    self.assertIn("| explanation | reshaping | weight=0.3 | 0.800 [0.800, 0.800] |", report)
    self.assertIn("Wall time 12 s on", report)
    stored = summary["tasks"]["decoy_digits"]["criteria"]
    self.assertEqual([criterion["verdict"] for criterion in stored],
                     ["holds", "inconclusive", "holds"])
    self.assertAlmostEqual(stored[0]["estimate"]["mean"], 0.26, places=12)
    over_oracle = summary["tasks"]["decoy_digits"]["decodability_blocking_minus_oracle"]
    self.assertAlmostEqual(over_oracle["hidden_0"]["mean"], 0.285, places=12)
    with open(os.path.join(self.workdir, "summary.json")) as handle:
      self.assertEqual(json.load(handle)["tasks"], summary["tasks"])
    with open(os.path.join(self.workdir, "metrics.jsonl")) as handle:
      rows = [json.loads(line) for line in handle]
    self.assertLen(rows, 7)
    self.assertEqual([row["grid_point"] for row in rows if row["chosen"]],
                     [{}, {}, {"site": 1.0}, {}, {"weight": 0.3}])
    for figure in ("ood_accuracy.png", "decodability.png", "decodability_over_training.png"):
      self.assertTrue(os.path.exists(os.path.join(self.workdir, figure)), figure)

  def test_the_command_defaults_to_the_python_call(self):
    _, report = self._write()
    self.assertIn(f"Command: `{_report.DEFAULT_COMMAND}`", report)

  def test_judging_again_from_the_files_gives_the_written_verdicts(self):
    summary, report = self._write(command="c")
    judged = _report.judge(_results.load_results(self.workdir, ["decoy_digits"], self.arms))
    for verdict, stored in zip(judged["decoy_digits"].verdicts,
                               summary["tasks"]["decoy_digits"]["criteria"]):
      self.assertIn(verdict.sentence, report)
      self.assertEqual(verdict.as_dict(), stored)

  def test_the_confirmatory_set_judges_the_oracle_comparison_as_a_fourth_criterion(self):
    exploratory_summary, exploratory_report = self._write(command="c")
    self.config.criteria = "confirmatory"
    summary, report = self._write(command="c")
    verdicts = summary["tasks"]["decoy_digits"]["criteria"]
    self.assertLen(verdicts, 4)
    self.assertEqual(verdicts[:3], exploratory_summary["tasks"]["decoy_digits"]["criteria"])
    self.assertEqual(verdicts[3]["name"], _criteria.OVER_ORACLE.name)
    # ablate_fixed (site=1) [0.50, 0.52] minus the oracle [0.20, 0.25] at hidden_0, as in the note.
    over_oracle = summary["tasks"]["decoy_digits"]["decodability_blocking_minus_oracle"]
    self.assertEqual(verdicts[3]["estimate"], over_oracle["hidden_0"])
    self.assertEqual(verdicts[3]["verdict"], analysis.HOLDS)
    self.assertIn("Criteria (pre-registered, for the confirmatory run): ", report)
    self.assertIn(_criteria.OVER_ORACLE.describe(), report)
    self.assertIn("Not pre-registered", exploratory_report)
    self.assertNotIn("Not pre-registered", report)

  def test_an_unknown_criteria_set_is_named_before_anything_runs(self):
    config = flagship_config.get_config("smoke")
    config.criteria = "confirmed"
    with self.assertRaisesRegex(training.ConfigError,
                                r"config.criteria='confirmed': expected one of \['confirmatory', "
                                r"'exploratory'\]"):
      _run.validate(config)

  def test_an_added_criterion_reaches_the_report(self):
    criteria = _criteria.PREREGISTERED + (OVER_ORACLE,)
    judged = _report.judge(_results.load_results(self.workdir, ["decoy_digits"], self.arms),
                           criteria)
    text = _report.markdown(judged, criteria=criteria, sample_efficiency=None, num_seeds=2,
                            seconds=1.0, device="cpu", command="c")
    self.assertIn("; best block's decodability minus the oracle's >= 0.01 at some site. Each is "
                  "judged", text)
    # ablate_fixed (site=1) [0.50, 0.52] minus the oracle [0.20, 0.25] at hidden_0.
    mean, low, high = _interval([0.30, 0.27])
    self.assertIn(f"- `ablate_fixed` (site=1) minus the oracle: `hidden_0` +{mean:.3f} "
                  f"[+{low:.3f}, +{high:.3f}]; highest at `hidden_0`, at least 0.01: **holds**.",
                  text)


class CommandLineTest(absltest.TestCase):

  def test_command_line_of_a_module_and_of_a_script(self):
    argv = ["/repo/experiments/block_vs_reshape.py", "--config=configs/block_vs_reshape.py:smoke",
            "--workdir=/tmp/w", "--config.grids.marker.steering=(0.5, 1.0)"]
    self.assertEqual(cli.command_line(argv, "experiments.block_vs_reshape"),
                     "python -m experiments.block_vs_reshape "
                     "--config=configs/block_vs_reshape.py:smoke --workdir=/tmp/w "
                     "'--config.grids.marker.steering=(0.5, 1.0)'")
    self.assertEqual(cli.command_line(["experiments/train.py", "--workdir=w"]),
                     "python experiments/train.py --workdir=w")

  def test_run_hands_the_command_to_a_run_fn_that_takes_it(self):
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    self.enter_context(mock.patch.object(cli, "_CONFIG", types.SimpleNamespace(value={})))
    self.enter_context(mock.patch.object(cli, "_WORKDIR", types.SimpleNamespace(value=workdir)))
    self.enter_context(mock.patch.object(cli, "_COMMAND", "python -m experiments.x --workdir=w"))
    calls = []
    def with_command(config, workdir, *, command=None):
      calls.append(command)
    def without_command(config, workdir):
      calls.append((config, workdir))
    cli.run(with_command, ["binary"])
    cli.run(without_command, ["binary"])
    self.assertEqual(calls, ["python -m experiments.x --workdir=w", ({}, workdir)])

  def test_a_binary_passes_its_own_command_line(self):
    directory = self.enter_context(tempfile.TemporaryDirectory())
    with open(os.path.join(directory, "echo_config.py"), "w") as handle:
      handle.write("import ml_collections\n"
                   "def get_config():\n  return ml_collections.ConfigDict(dict(steps=1))\n")
    with open(os.path.join(directory, "echo_binary.py"), "w") as handle:
      handle.write(textwrap.dedent(f"""\
          from landscape import cli
          cli.define_flags({os.path.join(directory, "echo_config.py")!r})
          def run(config, workdir, *, command=None):
            print("COMMAND:", command)
          def main(argv):
            cli.run(run, argv)
          if __name__ == "__main__":
            cli.main(main)
          """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, directory]),
               LANDSCAPE_COMPILATION_CACHE="", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-m", "echo_binary", "--workdir=/tmp/w",
                             "--config.steps=3"], cwd=directory, env=env, capture_output=True,
                            text=True, timeout=300)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn("COMMAND: python -m echo_binary --workdir=/tmp/w --config.steps=3", result.stdout)

  def test_the_flagship_hands_its_command_to_the_report(self):
    config = flagship_config.get_config("smoke")
    config.tasks, config.arms = "toy_colors", "plain"
    config.sample_efficiency.enabled = False
    config.mesh.num_devices = 1
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    self.enter_context(mock.patch.object(_run, "run_arm"))  # nothing trains
    write = self.enter_context(mock.patch.object(_run.report, "write"))
    block_vs_reshape.run(config, workdir, command="python -m experiments.block_vs_reshape --x")
    block_vs_reshape.run(config, workdir)
    self.assertEqual([call.kwargs["command"] for call in write.call_args_list],
                     ["python -m experiments.block_vs_reshape --x", None])


if __name__ == "__main__":
  absltest.main()
