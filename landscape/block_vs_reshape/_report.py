"""report.md, its figures, summary.json and metrics.jsonl, computed from the arms' own files.

Four steps: load (every arm's results, read back from its files: `load_results`), judge (the
pre-registered criteria of ``config.criteria``, `CRITERIA`, each on its 95% interval over seeds, and
the comparison with the oracle beside them), figures, and markdown. Differences between arms pair runs
by seed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from landscape import analysis
from landscape import training
from landscape.block_vs_reshape._criteria import CRITERIA
from landscape.block_vs_reshape._criteria import DECODABILITY
from landscape.block_vs_reshape._criteria import OVER_ORACLE
from landscape.block_vs_reshape._criteria import PREREGISTERED
from landscape.block_vs_reshape._criteria import Criterion
from landscape.block_vs_reshape._criteria import Verdict
from landscape.block_vs_reshape._criteria import arm
from landscape.block_vs_reshape._criteria import best
from landscape.block_vs_reshape._criteria import describe
from landscape.block_vs_reshape._criteria import evaluate_all
from landscape.block_vs_reshape._criteria import measure
from landscape.block_vs_reshape._results import HEADLINE_METRICS
from landscape.block_vs_reshape._results import SELECTION_METRIC
from landscape.block_vs_reshape._results import ArmResult
from landscape.block_vs_reshape._results import best_of
from landscape.block_vs_reshape._results import load_results
from landscape.block_vs_reshape._sample_efficiency import CONDITIONS
from landscape.block_vs_reshape._tasks import TASK_TITLES

# What the report names as the command of a run started from Python rather than the binary.
DEFAULT_COMMAND = "landscape.block_vs_reshape.run(config, workdir)"
FAMILY_COLORS = {"baseline": ("black", "dimgray"),
                 "blocking": ("firebrick", "darkorange", "goldenrod", "indianred", "saddlebrown"),
                 "reshaping": ("royalblue", "seagreen", "purple", "teal")}


@dataclasses.dataclass(frozen=True)
class Judged:
  """One task's results and what the report concludes from them.

  results: every arm, in the order run. verdicts: each criterion's, in the criteria's order.
  over_oracle: per site, the best blocking arm's decodability minus the oracle's (None when either
  was not run; see `decodability_over_oracle`).
  """

  results: list[ArmResult]
  verdicts: list[Verdict]
  over_oracle: dict[str, analysis.Estimate] | None


def decodability_over_oracle(results: list[ArmResult]) -> dict[str, analysis.Estimate] | None:
  """Per site, the best blocking arm's decodability minus the oracle's, paired by seed.

  Not pre-registered. The third criterion holds even in the planted null (RESULTS.md): a probe reads
  the concept from any network whose input carries it, trained on the shortcut or not. The oracle,
  which never saw the shortcut agree with the label, is that floor; decodability beyond it is
  information the blocked network holds because it learned the shortcut.
  """
  return measure(best("blocking", DECODABILITY), arm("oracle", DECODABILITY), results)


def judge(all_results: dict[str, list[ArmResult]],
          criteria: Sequence[Criterion] = PREREGISTERED) -> dict[str, Judged]:
  """Every task's verdicts on ``criteria`` and its comparison with the oracle."""
  return {task: Judged(results, evaluate_all(results, criteria), decodability_over_oracle(results))
          for task, results in all_results.items()}


def _over_oracle_sentence(results: list[ArmResult],
                          excess: dict[str, analysis.Estimate] | None) -> str:
  if excess is None:
    return ("Decodability beyond the oracle's: not computed, a blocking arm or the oracle was not "
            "run.")
  above = [site for site, estimate in excess.items() if estimate.low > 0]
  per_site = "; ".join(f"`{site}` {estimate:+.3f}" for site, estimate in excess.items())
  named = f" ({', '.join(f'`{site}`' for site in above)})." if above else "."
  return ("Not pre-registered (criterion 3 also holds where nothing can be learned, see the "
          f"planted null): best blocking arm {describe(best_of(results, 'blocking'))} minus the "
          f"oracle, decodability (95% CI over paired seeds): {per_site}. Above the oracle at "
          f"{len(above)} of {len(excess)} sites{named}")


def _cell(estimate: analysis.Estimate) -> str:
  return f"{estimate.mean:.3f} [{estimate.low:.3f}, {estimate.high:.3f}]"


def results_table(results: list[ArmResult]) -> str:
  lines = ["| arm | family | chosen | val OOD acc | ID acc | OOD acc | shortcut-following |",
           "|---|---|---|---|---|---|---|"]
  for result in results:
    chosen = result.chosen_hyperparameters() or "-"
    cells = [_cell(result.validation[result.chosen])] + [
        _cell(result.estimate(metric)) for metric in HEADLINE_METRICS.values()]
    lines.append(f"| {result.arm} | {result.family} | {chosen} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def decodability_table(results: list[ArmResult]) -> str:
  sites = results[0].sites()
  chance = {site: float(np.mean(results[0].final[f"decodability_chance/{site}"])) for site in sites}
  header = " | ".join(f"`{site}` (chance {chance[site]:.2f})" for site in sites)
  lines = [f"| arm | {header} |",
           "|---|" + "---|" * len(sites)]
  for result in results:
    cells = [_cell(result.estimate(f"decodability/{site}")) for site in sites]
    lines.append(f"| {result.arm} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _colors(results: list[ArmResult]) -> dict[str, str]:
  counters = {family: 0 for family in FAMILY_COLORS}
  colors = {}
  for result in results:
    palette = FAMILY_COLORS[result.family]
    colors[result.arm] = palette[counters[result.family] % len(palette)]
    counters[result.family] += 1
  return colors


def _band(axis, steps, values, color, label, linestyle):
  estimates = [analysis.mean_interval(row) for row in values]
  axis.plot(steps, [e.mean for e in estimates], color=color, label=label, linestyle=linestyle)
  axis.fill_between(steps, [e.low for e in estimates], [e.high for e in estimates], color=color,
                    alpha=0.15, linewidth=0)


def _styles(result: ArmResult) -> str:
  return {"baseline": "-", "blocking": "--", "reshaping": "-"}[result.family]


def figure_over_training(all_results: dict[str, list[ArmResult]], metric_of, ylabel: str,
                         path: str, title_of) -> None:
  """One panel per task: each arm's mean of a metric over training, with its 95% band."""
  tasks = list(all_results)
  figure = Figure(figsize=(5.5 * len(tasks), 4.2))
  axes = figure.subplots(1, len(tasks), squeeze=False)
  for axis, task in zip(axes[0], tasks):
    colors = _colors(all_results[task])
    for result in all_results[task]:
      metric = metric_of(result)
      if metric in result.curves:
        steps, values = result.curves[metric]
        _band(axis, steps, values, colors[result.arm], result.arm, _styles(result))
    axis.set_title(title_of(task), fontsize=9)
    axis.set_xlabel("step")
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def figure_decodability(all_results: dict[str, list[ArmResult]], path: str) -> None:
  """One heat map per task: held-out probe accuracy of the concept, arm by site, at the end."""
  tasks = list(all_results)
  figure = Figure(figsize=(4.8 * len(tasks), 5.0))
  axes = figure.subplots(1, len(tasks), squeeze=False)
  for axis, task in zip(axes[0], tasks):
    results = all_results[task]
    sites = results[0].sites()
    values = np.asarray([[result.estimate(f"decodability/{site}").mean for site in sites]
                         for result in results])
    chance = np.mean(results[0].final[f"decodability_chance/{sites[0]}"])
    image = axis.imshow(values, vmin=min(chance, values.min()), vmax=1.0, cmap="viridis",
                        aspect="auto")
    axis.set_xticks(range(len(sites)), sites, rotation=30, ha="right", fontsize=7)
    axis.set_yticks(range(len(results)), [result.arm for result in results], fontsize=7)
    for row in range(values.shape[0]):
      for column in range(values.shape[1]):
        axis.text(column, row, f"{values[row, column]:.2f}", ha="center", va="center", fontsize=6,
                  color="white" if values[row, column] < (chance + 1) / 2 else "black")
    axis.set_title(f"{task}: concept decodability (chance {chance:.2f})", fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.046)
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def figure_sample_efficiency(efficiency: dict[str, Any], path: str) -> None:
  figure = Figure(figsize=(10, 4))
  axes = figure.subplots(1, 2, squeeze=False)
  for axis, split in zip(axes[0], ("id", "ood")):
    for condition, color in zip(CONDITIONS, ("black", "royalblue", "firebrick")):
      estimates = efficiency["curves"][condition][split]
      sizes = efficiency["sizes"]
      axis.plot(sizes, [e.mean for e in estimates], marker="o", color=color, label=condition)
      axis.fill_between(sizes, [e.low for e in estimates], [e.high for e in estimates], color=color,
                        alpha=0.15, linewidth=0)
    for threshold in efficiency["needed"][split]:
      axis.axhline(threshold, color="gray", linewidth=0.6, linestyle=":")
    axis.set_xscale("log")
    axis.set_xlabel("training examples")
    axis.set_ylabel(f"{split} test accuracy")
    axis.set_title(f"Toy Colors: {'both rules' if split == 'id' else 'rule 1 random'}", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def _efficiency_section(efficiency: dict[str, Any]) -> list[str]:
  settings = efficiency.get("settings", {})
  if settings.get("schedule") == "epochs":
    training_text = ("int(320,000 / n) passes over the n examples in order, batch min(256, n) (the "
                     "paper's schedule)")
  else:
    training_text = f"{efficiency['steps']} steps"
  if settings.get("explanation_normalize") == "annotated":
    weight_text = (f"{efficiency['explanation_weight']:.4g}, the penalty divided by the number of "
                   "annotated entries in the batch (the paper's sample-efficiency script: 10,000)")
  else:
    weight_text = (f"{efficiency['explanation_weight']:.4g}, the penalty averaged over examples "
                   "(the paper's full-data demos' 1000 with sums, on 0-255 inputs, rescaled to "
                   "inputs in [0, 1]; its sample-efficiency script used 10,000 per annotated "
                   "entry on 0-255 inputs)")
  if settings.get("rule") == "first_above":
    rule_text = "the first size whose mean accuracy is strictly above the threshold (the paper's rule)"
  else:
    rule_text = "read off the mean curve (log-linear between sizes)"
  lines = ["## Toy Colors sample efficiency", "",
           f"{len(efficiency['sizes'])} training-set sizes x {efficiency['num_seeds']} seeds per "
           f"condition, {training_text}, explanation lambda = {weight_text}. "
           "`pro_rule1`: every pixel but the corners annotated irrelevant (rule 1 is the reason); "
           "`anti_rule1`: the corners annotated irrelevant (rule 1 forbidden). Examples needed: "
           f"{rule_text}; the published ratios (Ross et al. 2017, one run per size) are label-only "
           "over `pro_rule1` examples.", "",
           "| test set | accuracy | label-only | pro_rule1 | anti_rule1 | ratio pro | ratio anti | "
           "published ratio |", "|---|---|---|---|---|---|---|---|"]
  count = lambda value: "not reached" if value is None else f"{value:.0f}"
  ratio = lambda value: "-" if value is None else f"{value:.1f}x"
  for split, by_threshold in efficiency["needed"].items():
    for threshold, row in by_threshold.items():
      lines.append(f"| {split} | {threshold:.2f} | {count(row['label_only'])} | "
                   f"{count(row['pro_rule1'])} | {count(row['anti_rule1'])} | "
                   f"{ratio(row['ratio_pro_rule1'])} | {ratio(row['ratio_anti_rule1'])} | "
                   f"{ratio(row['published_ratio'])} |")
  lines += ["", "Mean test accuracy by training-set size (95% CI):", "",
            "| examples | " + " | ".join(f"{c} ({s})" for c in CONDITIONS for s in ("id", "ood"))
            + " |",
            "|---|" + "---|" * 2 * len(CONDITIONS)]
  for index, size in enumerate(efficiency["sizes"]):
    cells = [_cell(efficiency["curves"][c][s][index]) for c in CONDITIONS for s in ("id", "ood")]
    lines.append(f"| {size:.0f} | " + " | ".join(cells) + " |")
  lines += ["", "![sample efficiency](sample_efficiency.png)", ""]
  return lines


def write_figures(workdir: str, all_results: dict[str, list[ArmResult]],
                  sample_efficiency: dict[str, Any] | None) -> None:
  """The report's PNG figures, into ``workdir`` (the task figures only when a task ran)."""
  if sample_efficiency is not None:
    figure_sample_efficiency(sample_efficiency, os.path.join(workdir, "sample_efficiency.png"))
  if not all_results:
    return
  figure_over_training(all_results, lambda result: HEADLINE_METRICS["ood_accuracy"], "OOD accuracy",
                       os.path.join(workdir, "ood_accuracy.png"), lambda task: TASK_TITLES[task])
  figure_over_training(
      all_results, lambda result: f"decodability/{result.tracked_site()}" if result.sites() else "",
      "concept decodability", os.path.join(workdir, "decodability_over_training.png"),
      lambda task: f"{task}: at `{all_results[task][0].tracked_site()}`")
  figure_decodability(all_results, os.path.join(workdir, "decodability.png"))


def markdown(judged: dict[str, Judged], *, criteria: Sequence[Criterion],
             sample_efficiency: dict[str, Any] | None, num_seeds: int, seconds: float,
             device: str, command: str) -> str:
  """report.md's text: the command, the criteria, each task's tables and verdicts, the figures.

  criteria: those ``judged`` was judged on, listed at the top. With `OVER_ORACLE` among them
  (the confirmatory set) the comparison with the oracle is a criterion, not a note beside them.
  """
  confirmatory = OVER_ORACLE in criteria
  lines = ["# Naive blocking versus landscape reshaping", "",
           f"Command: `{command}`", "",
           f"{num_seeds} seeds per arm, each arm's seeds and grid points trained together in one "
           f"compiled program; grid points chosen on `{SELECTION_METRIC}` (a validation split "
           "drawn like the OOD test, disjoint from it); means with 95% t-intervals over seeds. "
           f"Wall time {seconds:.0f} s on {device}.", "",
           f"Criteria (pre-registered{', for the confirmatory run' if confirmatory else ''}): "
           + "; ".join(criterion.describe() for criterion in criteria)
           + ". Each is judged on its 95% interval: holds / fails / inconclusive.", "",
           *(["![OOD accuracy over training](ood_accuracy.png)", "",
              "![decodability](decodability.png)", "",
              "![decodability over training](decodability_over_training.png)", ""]
             if judged else [])]
  for task, task_judged in judged.items():
    lines += [f"## {TASK_TITLES[task]}", "",
              f"The model and its sites: [{task}/model.html]({task}/model.html); each refitting "
              f"arm's directions at the end: `{task}/<arm>/directions.html`.", "",
              results_table(task_judged.results), "", "Criteria:", ""]
    lines += [f"- {verdict.sentence}" for verdict in task_judged.verdicts]
    if not confirmatory:
      lines += ["", _over_oracle_sentence(task_judged.results, task_judged.over_oracle)]
    lines += ["", "Decodability of the shortcut concept at the end (held-out linear probe on "
              "`val_ood`, with each arm's evaluation-time interventions):", "",
              decodability_table(task_judged.results), ""]
  if sample_efficiency is not None:
    lines += _efficiency_section(sample_efficiency)
  return "\n".join(lines) + "\n"


def summary_of(judged: dict[str, Judged], *, sample_efficiency: dict[str, Any] | None,
               num_seeds: int, seconds: float) -> dict[str, Any]:
  """summary.json: each task's verdicts, comparison with the oracle and headline estimates."""
  summary = {"seconds": seconds, "num_seeds": num_seeds, "tasks": {}}
  for task, task_judged in judged.items():
    over_oracle = task_judged.over_oracle
    summary["tasks"][task] = {
        "criteria": [verdict.as_dict() for verdict in task_judged.verdicts],
        "decodability_blocking_minus_oracle": (
            None if over_oracle is None else
            {site: dataclasses.asdict(estimate) for site, estimate in over_oracle.items()}),
        "arms": {result.arm: {"family": result.family, "chosen": result.hyperparameters,
                              "seeds": result.seeds,
                              **{name: dataclasses.asdict(result.estimate(metric))
                                 for name, metric in HEADLINE_METRICS.items()}}
                 for result in task_judged.results}}
  if sample_efficiency is not None:
    summary["sample_efficiency"] = sample_efficiency["needed"]
  return summary


def grid_rows(all_results: dict[str, list[ArmResult]]) -> list[dict[str, Any]]:
  """metrics.jsonl: one row per task, arm and grid point, with its validation estimate."""
  return [{"task": task, "arm": result.arm, "grid_point": point, "chosen": index == result.chosen,
           "validation": dataclasses.asdict(result.validation[index])}
          for task, results in all_results.items() for result in results
          for index, point in enumerate(result.grid)]


def write(config: ml_collections.ConfigDict, workdir: str, *, tasks: list[str], arms: list[str],
          sample_efficiency: dict[str, Any] | None, seconds: float,
          command: str | None = None, workers: int = 1) -> dict[str, Any]:
  """Writes report.md, the figures, summary.json and metrics.jsonl; returns the summary.

  command: what produced the run, as the report names it (the binary passes its command line);
  None names `DEFAULT_COMMAND`. workers: the worker processes the arms ran in (for the wall time).
  """
  criteria = CRITERIA[config.criteria]
  all_results = load_results(workdir, tasks, arms)
  judged = judge(all_results, criteria)
  write_figures(workdir, all_results, sample_efficiency)
  text = markdown(judged, criteria=criteria, sample_efficiency=sample_efficiency, num_seeds=config.num_seeds,
                  seconds=seconds, device=_device(workers), command=command or DEFAULT_COMMAND)
  with open(os.path.join(workdir, "report.md"), "w") as handle:
    handle.write(text)
  summary = summary_of(judged, sample_efficiency=sample_efficiency, num_seeds=config.num_seeds,
                       seconds=seconds)
  training.write_json_atomically(os.path.join(workdir, "summary.json"), summary)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as handle:
    handle.writelines(json.dumps(row) + "\n" for row in grid_rows(all_results))
  return summary


def _device(workers: int = 1) -> str:
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  processes = f", {workers} worker processes" if workers > 1 else ""
  return f"{jax.device_count()} x {kind}{processes}, jax {jax.__version__}"
