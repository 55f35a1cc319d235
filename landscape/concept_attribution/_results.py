"""Reading each arm's results back from its job's workdir: one `ArmResult` per arm and grid
point.

Everything the report needs is read from the files `training.train` wrote (summary.json and
metrics.jsonl), so a fresh run and one resumed from finished jobs report the same way. A job's
runs are told apart by their hyper-parameters (`_arms.runs_of`): each arm's index and the job's
values for its points.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from landscape import analysis
from landscape import training
from landscape.concept_attribution._arms import ARM_REGISTRY
from landscape.concept_attribution._arms import FAMILIES
from landscape.concept_attribution._arms import runs_of
from landscape.sites import BadInputError

STYLE_RATE = "style/rate"
STYLE_MARGIN = "style/margin"
SKILL_ACCURACY = "eval/skill/accuracy"
LOSS = "eval/heldout/loss"
MEAN_CODE = "features/mean_code"


@dataclasses.dataclass
class ArmResult:
  """One grid point of one arm.

  point: its hyper-parameters. seeds: its runs' seeds, in order (the same across arms: runs pair by
  seed). final: metric -> (S,) at the end. curves: metric -> (steps (E,), values (E, S)) at every
  evaluation. attribution: name -> (steps (L,), values (L, S, ...)) for the logged transform
  metrics of the site (``magnitude``, ``site_writer_magnitude``, ``share``, ``code_change``
  (L, S, F), ``span_share``
  (L, S, G + K): the feature sets' then the null groups', ``total_share``, ``norm``,
  ``activation_change`` (L, S)).
  mean_code: (E, S, F) the features' mean code at every evaluation (steps of ``curves``).
  """

  arm: str
  family: str
  point: dict[str, float]
  seeds: list[int]
  steps: int
  final: dict[str, np.ndarray]
  curves: dict[str, tuple[np.ndarray, np.ndarray]]
  attribution: dict[str, tuple[np.ndarray, np.ndarray]]
  mean_code: np.ndarray

  @property
  def label(self) -> str:
    """The arm and its grid point: "suppress (style_gain=0)"."""
    if not self.point:
      return self.arm
    return f"{self.arm} (" + ", ".join(f"{k}={v:g}" for k, v in self.point.items()) + ")"

  def estimate(self, metric: str) -> analysis.Estimate:
    return analysis.mean_interval(self.final[metric])

  def sites(self) -> list[str]:
    return [name.removeprefix("decodability/") for name in self.final
            if name.startswith("decodability/")]


def _per_run(value: Any, num_runs: int) -> np.ndarray:
  values = np.asarray(value, np.float64)
  return np.full(num_runs, float(values)) if values.ndim == 0 else values


def load_arm(workdir: str, arm: str, site: str, config: ml_collections.ConfigDict
             ) -> list[ArmResult]:
  """Every grid point of ``arm``, in grid order, read from ``workdir/arms/{its job}``.

  Raises:
    BadInputError: when the job's runs hold no run of one of the arm's points (a job trained with
      another config).
  """
  job_dir = os.path.join(workdir, "arms", ARM_REGISTRY[arm].job)
  with open(os.path.join(job_dir, "summary.json")) as handle:
    summary = json.load(handle)
  runs = summary["runs"]
  num_runs = len(runs)
  rows = training.read_jsonl(os.path.join(job_dir, "metrics.jsonl"))
  eval_rows = [row for row in rows if SKILL_ACCURACY in row]
  names = {}
  for row in rows:
    for name in row:
      if name.startswith("transform") and name.startswith(f"/{site}/", name.index("/")):
        names.setdefault(name.rsplit("/", 1)[1], name)
  transform_rows = [row for row in rows if names.get("share") in row]
  results = []
  for point, kept in runs_of(runs, arm, config):
    if not kept:
      raise BadInputError(f"{job_dir}: no run of arm {arm!r} at {point}; its runs are {runs}")
    final = {name: _per_run(value, num_runs)[kept] for name, value in summary.items()
             if name.startswith(("eval/", "style/", "source/", "decodability/"))}
    curves = {}
    for name in eval_rows[0] if eval_rows else ():
      if name.startswith(("eval/", "style/", "source/")):
        steps = np.asarray([row["step"] for row in eval_rows])
        curves[name] = (steps, np.stack([_per_run(row[name], num_runs)[kept]
                                         for row in eval_rows]))
    attribution = {}
    for kind, name in names.items():
      if transform_rows:
        steps = np.asarray([row["step"] for row in transform_rows])
        values = np.stack([np.asarray(row[name], np.float64)[kept] for row in transform_rows])
        attribution[kind] = (steps, values)
    mean_code = np.stack([np.asarray(row[MEAN_CODE], np.float64)[kept] for row in eval_rows])
    results.append(ArmResult(arm=arm, family=FAMILIES[arm], point=dict(sorted(point.items())),
                             seeds=[runs[index]["seed"] for index in kept],
                             steps=int(summary["step"]), final=final, curves=curves,
                             attribution=attribution, mean_code=mean_code))
  return results


def load_results(workdir: str, arms: Sequence[str], site: str,
                 config: ml_collections.ConfigDict) -> list[ArmResult]:
  """Every arm's grid points, arms in the order given."""
  return [result for arm in arms for result in load_arm(workdir, arm, site, config)]


def find(results: Sequence[ArmResult], arm: str, point: dict[str, float] | None = None
         ) -> ArmResult | None:
  """The result of ``arm`` at ``point`` (its first grid point when None), or None if not run."""
  for result in results:
    if result.arm == arm and (point is None or all(
        np.isclose(result.point.get(key, np.nan), value) for key, value in point.items())):
      return result
  return None
