"""Reading an arm's results back from its workdir, and choosing its grid point on validation.

Everything the report needs is read from the files `training.train` wrote (summary.json and
metrics.jsonl), so a fresh run and one resumed from finished arms report the same way.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from landscape import analysis
from landscape import training
from landscape.block_vs_reshape._arms import FAMILIES

SELECTION_METRIC = "eval/val_ood/accuracy"
HEADLINE_METRICS = {"id_accuracy": "eval/id/accuracy", "ood_accuracy": "eval/ood/accuracy",
                    "shortcut_following": "eval/ood/shortcut"}


@dataclasses.dataclass
class ArmResult:
  """One arm on one task, at the grid point chosen on validation.

  grid: every grid point (hyper-parameter values); chosen: the index of the one kept.
  validation: the selection metric's estimate at each grid point.
  seeds: the seeds of the chosen point's runs, in order (the same across arms: runs pair by seed).
  final: metric -> (S,) values at the end of training, for the chosen point's runs.
  curves: metric -> (steps (E,), values (E, S)) over training, for the chosen point's runs.
  """

  task: str
  arm: str
  family: str
  grid: list[dict[str, float]]
  chosen: int
  validation: list[analysis.Estimate]
  seeds: list[int]
  final: dict[str, np.ndarray]
  curves: dict[str, tuple[np.ndarray, np.ndarray]]

  @property
  def hyperparameters(self) -> dict[str, float]:
    return self.grid[self.chosen]

  def chosen_hyperparameters(self) -> str:
    """The chosen grid point in words: "weight=0.3" ("" for an arm without a grid)."""
    return ", ".join(f"{name}={value:g}" for name, value in self.hyperparameters.items())

  def estimate(self, metric: str) -> analysis.Estimate:
    return analysis.mean_interval(self.final[metric])

  def sites(self) -> list[str]:
    return [name.removeprefix("decodability/") for name in self.final
            if name.startswith("decodability/")]

  def tracked_site(self) -> str:
    """The site whose decodability was measured over training (the evaluations before the last
    probe one site), or the first site where every evaluation probed them all."""
    return max(self.sites(), key=lambda site: len(self.curves.get(f"decodability/{site}",
                                                                  ((),))[0]))


def _per_run(value: Any, num_runs: int) -> np.ndarray:
  """A metric as (num_runs,) values: summary.json holds a list over runs; a metrics.jsonl row of a
  single run (and a summary.json written before lists) holds a number."""
  values = np.asarray(value, np.float64)
  return np.full(num_runs, float(values)) if values.ndim == 0 else values


def load_arm(workdir: str, task: str, arm: str) -> ArmResult:
  """The results of ``workdir/task/arm``, with its grid point chosen on ``SELECTION_METRIC``."""
  arm_dir = os.path.join(workdir, task, arm)
  with open(os.path.join(arm_dir, "summary.json")) as handle:
    summary = json.load(handle)
  runs = summary["runs"]
  points = [{key: value for key, value in run.items() if key != "seed"} for run in runs]
  grid = [point for index, point in enumerate(points) if point not in points[:index]]
  members = [[index for index, point in enumerate(points) if point == grid_point]
             for grid_point in grid]
  selection = _per_run(summary[SELECTION_METRIC], len(runs))
  validation = [analysis.mean_interval(selection[indices]) for indices in members]
  chosen = int(np.argmax([estimate.mean for estimate in validation]))
  kept = members[chosen]
  final = {name: _per_run(value, len(runs))[kept] for name, value in summary.items()
           if name.startswith(("eval/", "decodability"))}
  # Evaluations before the last step cover some eval sets and sites (config.interim_eval_sets, the
  # first site's decodability): each metric's curve has the steps at which it was evaluated.
  rows = training.read_jsonl(os.path.join(arm_dir, "metrics.jsonl"))
  curves = {}
  for name in dict.fromkeys(name for row in rows for name in row):
    if name.startswith(("eval/", "decodability")):
      evaluated = [row for row in rows if name in row]
      steps = np.asarray([row["step"] for row in evaluated])
      values = np.stack([_per_run(row[name], len(runs))[kept] for row in evaluated])
      curves[name] = (steps, values)
  return ArmResult(task=task, arm=arm, family=FAMILIES[arm], grid=grid, chosen=chosen,
                   validation=validation, seeds=[runs[index]["seed"] for index in kept],
                   final=final, curves=curves)


def load_results(workdir: str, tasks: Sequence[str],
                 arms: Sequence[str]) -> dict[str, list[ArmResult]]:
  """Every task's arms, in order, read back from ``workdir`` (see `load_arm`)."""
  return {task: [load_arm(workdir, task, arm) for arm in arms] for task in tasks}


def best_of(results: list[ArmResult], family: str) -> ArmResult | None:
  """The arm of ``family`` with the best validation score at its chosen point (None if none ran)."""
  candidates = [result for result in results if result.family == family]
  if not candidates:
    return None
  return max(candidates, key=lambda result: result.validation[result.chosen].mean)
