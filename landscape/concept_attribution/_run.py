"""Running the experiment: the setting (base model, SAEs, labels), then every arm, resuming what an
earlier invocation left, then the report."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import ml_collections
from absl import logging

from landscape import objectives
from landscape import training
from landscape.concept_attribution import _measures as measures
from landscape.concept_attribution import _report as report
from landscape.concept_attribution._arms import ARMS
from landscape.concept_attribution._arms import job_arms
from landscape.concept_attribution._arms import job_grid
from landscape.concept_attribution._arms import job_steps
from landscape.concept_attribution._arms import jobs_of
from landscape.concept_attribution._arms import plan_job
from landscape.concept_attribution._setting import COVERAGES
from landscape.concept_attribution._setting import Setting
from landscape.concept_attribution._setting import build_setting
from landscape.training import ConfigError

# Config fields that shape every job's runs beyond the loop's own (recorded in each job's
# config.json, so a rerun with any of them changed is refused rather than resumed).
SETTING_FIELDS = ("world", "model", "site", "coverage", "null_groups", "pretrain", "sae",
                  "finetune", "group_size", "roles", "grids", "live", "learning_rate", "eval_size",
                  "probe_size", "probe_seed", "source_batch_size", "decodability_steps",
                  "long_factor", "code_change_examples")


def loop_config(config: ml_collections.ConfigDict, job: str) -> ml_collections.ConfigDict:
  """The training loop's fields for ``job``: ``config.evaluations`` equally spaced evaluations
  (and one at step 0), the attribution logged every ``attribution_log_every`` steps, one
  checkpoint at the end; the setting, the job and its arms recorded as ``experiment``."""
  loop = training.loop_config()
  loop.seed = config.seed
  loop.num_seeds = config.num_seeds
  loop.steps = job_steps(job, config)
  loop.batch_size = config.batch_size
  loop.eval_every = max(1, loop.steps // config.evaluations)
  loop.steps_per_call = loop.eval_every
  loop.log_every = config.attribution_log_every
  loop.checkpoint_every = 0
  loop.eval_batch_size = min(loop.eval_batch_size, config.eval_size)
  loop.tensorboard = False
  identity = {field: (config[field].to_dict()
                      if isinstance(config[field], ml_collections.ConfigDict) else config[field])
              for field in SETTING_FIELDS}
  loop.experiment = ml_collections.ConfigDict(dict(job=job, arms=",".join(job_arms(job)),
                                                   **identity))
  return loop


def check_earlier_run(workdir: str, loop: ml_collections.ConfigDict,
                      hparam_grid: list[dict[str, float]] | None) -> None:
  """ConfigError if ``workdir`` holds a run of a different setting; nothing if it holds none."""
  config_path = os.path.join(workdir, "config.json")
  if os.path.exists(config_path):
    with open(config_path) as handle:
      training.check_resumed_config(loop, json.load(handle), hparam_grid)


def run_job(job: str, setting: Setting, config: ml_collections.ConfigDict, workdir: str,
            evaluators: measures.Evaluators) -> None:
  """Trains one job (every point of its arms' grids, with every seed, in one program) unless it
  already finished."""
  job_dir = os.path.join(workdir, "arms", job)
  loop = loop_config(config, job)
  plan = plan_job(job, setting, config)
  grid = job_grid(job, config)
  if training.finished_run(loop, job_dir, model=setting.model, objective=plan.objective,
                           optimizer=plan.optimizer, dataset=plan.dataset,
                           refreshers=plan.refreshers, hparam_grid=grid,
                           initial_params=setting.base_params):
    logging.info("%s: finished before, reading its results", job)
    return
  start = time.perf_counter()
  training.train(loop, job_dir, model=setting.model, objective=plan.objective,
                 optimizer=plan.optimizer, dataset=plan.dataset, refreshers=plan.refreshers,
                 optimizer_extra_args=plan.optimizer_extra_args,
                 eval_metrics=objectives.CLASSIFICATION_METRICS,
                 evaluators=evaluators.for_arm(),
                 hparam_grid=grid, initial_params=setting.base_params, progress=False)
  logging.info("%s (%s): %.1f s", job, ", ".join(job_arms(job)), time.perf_counter() - start)


def validate(config: ml_collections.ConfigDict) -> list[str]:
  """The arms to run; ConfigError naming the field for anything unknown or impossible, every
  job's training loop included (`training.validate_loop_config`). Builds and trains nothing."""
  arms = [name for name in config.arms.split(",") if name]
  unknown = sorted(set(arms) - set(ARMS))
  if unknown or not arms:
    raise ConfigError(f"config.arms={config.arms!r}: unknown {unknown or 'empty'}; expected a "
                      f"comma-separated subset of {ARMS}")
  if config.num_seeds < 2:
    raise ConfigError(f"config.num_seeds={config.num_seeds}: intervals over seeds need at least 2")
  training.check_positive(config, ["steps", "batch_size", "evaluations", "attribution_log_every",
                                   "group_size", "long_factor", "probe_size", "eval_size",
                                   "source_batch_size", "learning_rate", "code_change_examples",
                                   "null_groups"])
  if not isinstance(config.null_groups, int) or isinstance(config.null_groups, bool):
    raise ConfigError(f"config.null_groups={config.null_groups!r}: expected an integer (how many "
                      "null groups)")
  if config.attribution_log_every > config.steps:
    raise ConfigError(f"config.attribution_log_every={config.attribution_log_every} exceeds "
                      f"config.steps={config.steps}: no attribution would be logged")
  if config.coverage not in COVERAGES:
    raise ConfigError(f"config.coverage={config.coverage!r}: expected one of {COVERAGES}")
  if not 0.0 <= config.skill_threshold <= 1.0:
    raise ConfigError(f"config.skill_threshold={config.skill_threshold}: an accuracy, expected in "
                      "[0, 1]")
  if config.overhead_repeats < 0:
    raise ConfigError(f"config.overhead_repeats={config.overhead_repeats}: expected 0 (not "
                      "measured) or more")
  if config.code_change_examples > config.probe_size:
    raise ConfigError(f"config.code_change_examples={config.code_change_examples} must be at most "
                      f"config.probe_size={config.probe_size}")
  roles = [role for role in config.roles.split(",") if role]
  if not roles or set(roles) - {"writes", "reads"}:
    raise ConfigError(f"config.roles={config.roles!r}: expected 'writes', 'reads' or both, "
                      "comma-separated")
  if 3 * config.group_size > config.sae.d_sae:
    raise ConfigError(f"config.group_size={config.group_size}: three groups (style, skill, "
                      f"random) must fit in config.sae.d_sae={config.sae.d_sae}")
  for name in ("suppress", "amplify", "steering", "concept_penalty"):
    if not config.grids[name]:
      raise ConfigError(f"config.grids.{name}=(): give one or more values")
  for job in jobs_of(arms):
    training.validate_loop_config(loop_config(config, job),
                                  num_runs=config.num_seeds * len(job_grid(job, config)))
  return arms


def run(config: ml_collections.ConfigDict, workdir: str, *,
        command: str | None = None) -> dict[str, Any]:
  """Builds the setting, trains every arm (resuming finished or interrupted ones), writes the
  report.

  Writes, under ``workdir``: ``base/`` (the base model's run), ``sae/`` (the SAEs, their labels
  and stability), ``arms/{job}/`` (each job's metrics.jsonl, summary.json, checkpoints: its runs
  are every point of its arms' grids, each with every seed; see `_arms.JOB_REGISTRY`; asking for
  one arm of a job trains all of them, they share its program),
  ``report.md`` with its PNG figures, ``metrics.jsonl`` (one row per arm and grid point) and
  ``summary.json`` (the table, the attribution checks and the criteria). ``command`` is what the
  report says produced the run.
  """
  arms = validate(config)
  jobs = jobs_of(arms)
  for job in jobs:  # refused before the setting is built: a different setting in a job's directory
    check_earlier_run(os.path.join(workdir, "arms", job), loop_config(config, job),
                      job_grid(job, config))
  os.makedirs(workdir, exist_ok=True)
  start = time.perf_counter()
  setting = build_setting(config, workdir)
  evaluators = measures.make_evaluators(setting, config)
  for job in jobs:
    run_job(job, setting, config, workdir, evaluators)
  seconds = time.perf_counter() - start
  overhead = (measures.attribution_overhead(setting, config, repeats=config.overhead_repeats)
              if config.overhead_repeats else None)
  return report.write(config, workdir, setting=setting, arms=arms, seconds=seconds,
                      command=command, overhead=overhead)
