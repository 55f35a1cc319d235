"""Running the experiment: every task and arm, resuming what an earlier invocation left."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from landscape import inspect
from landscape import training
from landscape.block_vs_reshape import _report as report
from landscape.block_vs_reshape import _sample_efficiency as sample_efficiency
from landscape.block_vs_reshape._arms import ARMS
from landscape.block_vs_reshape._arms import EVAL_METRICS
from landscape.block_vs_reshape._arms import decodability_evaluator
from landscape.block_vs_reshape._arms import make_task_decodability
from landscape.block_vs_reshape._criteria import CRITERIA
from landscape.block_vs_reshape._arms import plan_arm
from landscape.block_vs_reshape._schedule import loop_config
from landscape.block_vs_reshape._schedule import settings_identity
from landscape.block_vs_reshape._tasks import TASKS
from landscape.block_vs_reshape._tasks import Task
from landscape.block_vs_reshape._tasks import build_task
from landscape.training import ConfigError


def finished_before(workdir: str, loop: ml_collections.ConfigDict,
                    hparam_grid: list[dict[str, float]] | None) -> bool:
  """Whether ``workdir`` holds this run, finished; ConfigError if it holds a different one."""
  path = os.path.join(workdir, "summary.json")
  if not os.path.exists(path):
    return False
  with open(path) as handle:
    finished_step = json.load(handle).get("step")
  config_path = os.path.join(workdir, "config.json")
  if os.path.exists(config_path):
    with open(config_path) as handle:
      training.check_resumed_config(loop, json.load(handle), hparam_grid)
  return finished_step == loop.steps


def arm_identity(task: Task, arm: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Everything beyond the loop's fields that shapes an arm's runs (see `loop_config`)."""
  return dict(task=task.name, arm=arm, task_settings=settings_identity(config[task.name]),
              **{field: config[field] for field in ("refit_every", "probe_batch_size",
                                                    "decodability_steps", "decodability_l2")})


def run_arm(task: Task, arm: str, config: ml_collections.ConfigDict, workdir: str, *,
            deployed_measure=None) -> None:
  """Trains one arm (all its grid points and seeds in one program) unless it already finished.

  ``deployed_measure``: the task's decodability measurement without evaluation-time interventions
  (`make_task_decodability`), shared by the arms that deploy the model unchanged so its program is
  compiled once per task; None makes the arm its own.
  """
  arm_dir = os.path.join(workdir, task.name, arm)
  plan = plan_arm(arm, task, config)
  loop = loop_config(config, task.steps, task.batch_size, arm_identity(task, arm, config))
  hparam_grid = plan.grid if plan.grid != [{}] else None
  if finished_before(arm_dir, loop, hparam_grid):
    logging.info("%s/%s: finished before, reading its results", task.name, arm)
    return
  start = time.perf_counter()
  result = training.train(loop, arm_dir, model=task.model, objective=plan.objective,
                          optimizer=plan.optimizer, dataset=plan.dataset, refreshers=plan.refreshers,
                          optimizer_extra_args=plan.optimizer_extra_args, eval_metrics=EVAL_METRICS,
                          eval_interventions=plan.eval_interventions,
                          evaluators=[decodability_evaluator(
                              task, plan, config,
                              deployed_measure if plan.eval_interventions is None else None)],
                          hparam_grid=hparam_grid)
  if plan.refreshers:
    first_run = jax.tree_util.tree_map(lambda leaf: leaf[0], training.fetch(
        {refresher.name: result.state.refreshed[refresher.name] for refresher in plan.refreshers}))
    inspect.write_html(first_run, os.path.join(arm_dir, "directions.html"),
                       title=f"{task.name}/{arm}: the directions at the end (first run)")
  logging.info("%s/%s: %.1f s", task.name, arm, time.perf_counter() - start)


def validate(config: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
  """The tasks and arms to run; ConfigError naming the field for anything unknown or impossible."""
  tasks = [name for name in config.tasks.split(",") if name]
  arms = [name for name in config.arms.split(",") if name]
  for field, chosen, known in (("tasks", tasks, TASKS), ("arms", arms, ARMS)):
    unknown = sorted(set(chosen) - set(known))
    # No task is a run of the sample-efficiency study alone (the rrr_paper preset).
    allowed_empty = field == "tasks" and config.sample_efficiency.enabled
    if unknown or (not chosen and not allowed_empty):
      raise ConfigError(f"config.{field}={config[field]!r}: unknown {unknown or 'empty'}; expected "
                        f"a comma-separated subset of {known}")
  if config.num_seeds < 2:
    raise ConfigError(f"config.num_seeds={config.num_seeds}: intervals over seeds need at least 2")
  if config.criteria not in CRITERIA:
    raise ConfigError(f"config.criteria={config.criteria!r}: expected one of {sorted(CRITERIA)}")
  training.check_positive(config, ["refit_every", "probe_batch_size", "decodability_steps",
                                   "evaluations"])
  for task in tasks:
    for name, values in config.grids[task].items():
      if not values or any(value < 0 for value in values):
        raise ConfigError(f"config.grids.{task}.{name}={tuple(values)}: give one or more values >= 0")
  return tasks, arms


def run(config: ml_collections.ConfigDict, workdir: str, *,
        command: str | None = None) -> dict[str, Any]:
  """Runs every task and arm (resuming finished or interrupted ones), then writes the report.

  Writes, under ``workdir``: ``{task}/{arm}/`` (each arm's metrics.jsonl, summary.json and
  checkpoints), ``sample_efficiency/``, ``report.md`` with its PNG figures, ``metrics.jsonl`` (one
  row per task, arm and grid point) and ``summary.json`` (the table and the criteria). ``command``
  is what the report says produced the run (the binary passes its command line; None names this
  call).
  """
  tasks, arms = validate(config)
  for num_runs in sorted(program_sizes(config, tasks, arms)):
    training.validate_loop_config(loop_config(config), num_runs=num_runs)
  os.makedirs(workdir, exist_ok=True)
  start = time.perf_counter()
  for task_name in tasks:
    task = build_task(task_name, config)
    inspect.write_html(task.model, os.path.join(workdir, task.name, "model.html"),
                       title=f"{task.name}: {task.model.name} and its sites",
                       params=jax.eval_shape(task.model.init, jax.random.PRNGKey(0)),
                       example_inputs=task.dataset.example_batch(2)["inputs"])
    # One arm at a time: orbax's asynchronous checkpoints of two arms trained on two threads of
    # one process deadlock (their commits signal through process-wide keys).
    deployed_measure = make_task_decodability(task, config)
    for arm in arms:
      run_arm(task, arm, config, workdir, deployed_measure=deployed_measure)
  efficiency = None
  if config.sample_efficiency.enabled:
    efficiency = sample_efficiency.run(config, os.path.join(workdir, "sample_efficiency"))
  return report.write(config, workdir, tasks=tasks, arms=arms, sample_efficiency=efficiency,
                      seconds=time.perf_counter() - start, command=command)


def program_sizes(config: ml_collections.ConfigDict, tasks: list[str], arms: list[str]) -> set[int]:
  """The run-axis lengths of the programs this config trains (seeds times grid points)."""
  sizes = {config.num_seeds, 2 * config.num_seeds}
  for task in tasks:
    sizes.update(config.num_seeds * len(values) for values in config.grids[task].values())
  return sizes
