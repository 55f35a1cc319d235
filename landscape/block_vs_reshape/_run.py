"""Running the experiment: every task and arm, resuming what an earlier invocation left."""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from landscape import cli
from landscape import inspect
from landscape import training
from landscape.block_vs_reshape import _report as report
from landscape.block_vs_reshape import _sample_efficiency as sample_efficiency
from landscape.block_vs_reshape._arms import ARM_REGISTRY
from landscape.block_vs_reshape._arms import ARMS
from landscape.block_vs_reshape._arms import EVAL_METRICS
from landscape.block_vs_reshape._arms import decodability_evaluator
from landscape.block_vs_reshape._arms import make_task_decodability
from landscape.block_vs_reshape._criteria import CRITERIA
from landscape.block_vs_reshape._arms import plan_arm
from landscape.block_vs_reshape._schedule import loop_config
from landscape.block_vs_reshape._schedule import settings_identity
from landscape.block_vs_reshape._tasks import TASK_REGISTRY
from landscape.block_vs_reshape._tasks import TASKS
from landscape.block_vs_reshape._tasks import Task
from landscape.block_vs_reshape._tasks import build_task
from landscape.training import ConfigError


def arm_identity(task: Task, arm: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Everything beyond the loop's fields that shapes an arm's runs (see `loop_config`)."""
  return dict(task=task.name, arm=arm, task_settings=settings_identity(config[task.name]),
              **{field: config[field] for field in ("refit_every", "probe_batch_size",
                                                    "decodability_steps", "decodability_l2")})


def run_arm(task: Task, arm: str, config: ml_collections.ConfigDict, workdir: str, *,
            deployed_measures=None, progress: bool = True) -> None:
  """Trains one arm (all its grid points and seeds in one program) unless it already finished.

  ``deployed_measures``: the task's decodability measurements without evaluation-time interventions
  (`make_task_decodability`), shared by the arms that deploy the model unchanged so their programs
  are compiled once per task; None makes the arm its own. ``progress``: the loop's progress lines.
  """
  arm_dir = os.path.join(workdir, task.name, arm)
  plan = plan_arm(arm, task, config)
  loop = loop_config(config, task.steps, task.batch_size, arm_identity(task, arm, config))
  hparam_grid = plan.grid if plan.grid != [{}] else None
  if training.finished_run(loop, arm_dir, model=task.model, objective=plan.objective,
                           optimizer=plan.optimizer, dataset=plan.dataset,
                           refreshers=plan.refreshers, hparam_grid=hparam_grid):
    logging.info("%s/%s: finished before, reading its results", task.name, arm)
    return
  start = time.perf_counter()
  result = training.train(loop, arm_dir, model=task.model, objective=plan.objective,
                          optimizer=plan.optimizer, dataset=plan.dataset, refreshers=plan.refreshers,
                          optimizer_extra_args=plan.optimizer_extra_args, eval_metrics=EVAL_METRICS,
                          eval_interventions=plan.eval_interventions,
                          evaluators=[decodability_evaluator(
                              task, plan, config,
                              deployed_measures if plan.eval_interventions is None else None)],
                          hparam_grid=hparam_grid, progress=progress)
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
  training.resolve_workers(config.workers)
  for task in tasks:
    for name, values in config.grids[task].items():
      if not values or any(value < 0 for value in values):
        raise ConfigError(f"config.grids.{task}.{name}={tuple(values)}: give one or more values >= 0")
  return tasks, arms


@dataclasses.dataclass(frozen=True)
class Job:
  """Arms of one task trained one after another in one process (they share compiled programs: see
  `Arm.group`), or the sample-efficiency study (``task`` None)."""

  task: str | None
  arms: tuple[str, ...] = ()
  writes_model_page: bool = False  # the task's model.html (one job per task writes it)


SAMPLE_EFFICIENCY_SECONDS = 30.0  # the default study on a 2-core CPU, measured; orders the jobs


def plan_jobs(config: ml_collections.ConfigDict, tasks: list[str], arms: list[str]) -> list[Job]:
  """The run's jobs, longest first (by `TaskKind.arm_seconds`), each task's arms grouped."""
  jobs = []
  for task in tasks:
    groups: dict[str, list[str]] = {}
    for arm in arms:
      groups.setdefault(ARM_REGISTRY[arm].group or arm, []).append(arm)
    jobs += [Job(task, tuple(group), writes_model_page=index == 0)
             for index, group in enumerate(groups.values())]
  seconds = {job: TASK_REGISTRY[job.task].arm_seconds * len(job.arms) for job in jobs}
  if config.sample_efficiency.enabled:
    jobs.append(Job(None))
    seconds[jobs[-1]] = SAMPLE_EFFICIENCY_SECONDS
  return sorted(jobs, key=lambda job: -seconds[job])


# This process's tasks and their deployed decodability measures, built once per task and config.
_TASKS_HERE: dict[tuple[str, str], tuple[Task, Any]] = {}


def _task_here(name: str, config: ml_collections.ConfigDict) -> tuple[Task, Any]:
  key = (name, config.to_json())
  if key not in _TASKS_HERE:
    task = build_task(name, config)
    _TASKS_HERE[key] = task, make_task_decodability(task, config)
  return _TASKS_HERE[key]


def run_job(config: ml_collections.ConfigDict, workdir: str, job: Job, *,
            progress: bool = True) -> dict[str, Any] | None:
  """Runs one job here; the sample-efficiency study's results, or None for a task's arms."""
  if job.task is None:
    return sample_efficiency.run(config, os.path.join(workdir, "sample_efficiency"))
  task, deployed_measures = _task_here(job.task, config)
  if job.writes_model_page:
    inspect.write_html(task.model, os.path.join(workdir, task.name, "model.html"),
                       title=f"{task.name}: {task.model.name} and its sites",
                       params=jax.eval_shape(task.model.init, jax.random.PRNGKey(0)),
                       example_inputs=task.dataset.example_batch(2)["inputs"])
  # One arm at a time in a process: orbax's asynchronous checkpoints of two arms trained on two
  # threads of one process deadlock (their commits signal through process-wide keys).
  for arm in job.arms:
    run_arm(task, arm, config, workdir, deployed_measures=deployed_measures, progress=progress)
  return None


def run(config: ml_collections.ConfigDict, workdir: str, *,
        command: str | None = None) -> dict[str, Any]:
  """Runs every task and arm (resuming finished or interrupted ones), then writes the report.

  The jobs (`plan_jobs`: a task's arms that share programs, and the sample-efficiency study) run
  in ``config.workers`` worker processes on a CPU (`training.run_jobs`; 0: one per core, at most
  four; 1: here, one after another, as on a GPU or TPU). A job computes the same in any process.

  Writes, under ``workdir``: ``{task}/{arm}/`` (each arm's metrics.jsonl, summary.json and
  checkpoints), ``sample_efficiency/``, ``report.md`` with its PNG figures, ``metrics.jsonl`` (one
  row per task, arm and grid point) and ``summary.json`` (the table and the criteria). ``command``
  is what the report says produced the run (the binary passes its command line; None names this
  call).
  """
  tasks, arms = validate(config)
  for num_runs in sorted(program_sizes(config, tasks, arms)):
    training.validate_loop_config(loop_config(config), num_runs=num_runs)
  workers = training.resolve_workers(config.workers)
  os.makedirs(workdir, exist_ok=True)
  start = time.perf_counter()
  jobs = plan_jobs(config, tasks, arms)
  try:
    results = training.run_jobs(
        functools.partial(run_job, config, workdir, progress=workers == 1), jobs,
        workers=workers, setup=cli.quiet_library_logs)
  finally:
    _TASKS_HERE.clear()
  efficiency = next((result for job, result in zip(jobs, results) if job.task is None), None)
  return report.write(config, workdir, tasks=tasks, arms=arms, sample_efficiency=efficiency,
                      seconds=time.perf_counter() - start, command=command,
                      workers=min(workers, len(jobs)))


def program_sizes(config: ml_collections.ConfigDict, tasks: list[str], arms: list[str]) -> set[int]:
  """The run-axis lengths of the programs this config trains (seeds times grid points)."""
  sizes = {config.num_seeds, 2 * config.num_seeds}
  for task in tasks:
    sizes.update(config.num_seeds * len(values) for values in config.grids[task].values())
  return sizes
