"""Where metrics go: WORKDIR/metrics.jsonl, TensorBoard event files (no TensorFlow), the console.

Every metric carries the run axis first. In metrics.jsonl, with one run a value is written as a
number; with several, as a list with one entry per run (seed). summary.json always holds the list
(`per_run_json_value`), whatever the number of runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging


def to_json_value(value: Any, num_runs: int) -> Any:
  """A run-stacked metric as JSON: a number (or nested lists for vectors) per run."""
  array = np.asarray(value)
  if array.dtype.kind in "iub":
    array = array.astype(np.int64)
  else:
    array = array.astype(np.float64)
  return array[0].tolist() if num_runs == 1 else array.tolist()


def per_run_json_value(value: Any) -> list[Any]:
  """A run-stacked metric as JSON, always a list with one entry per run (numbers or nested lists)."""
  array = np.asarray(value)
  return array.astype(np.int64 if array.dtype.kind in "iub" else np.float64).tolist()


def write_json_atomically(path: str, payload: Any) -> None:
  temporary = path + ".tmp"
  with open(temporary, "w") as handle:
    json.dump(payload, handle, indent=2, sort_keys=True)
    handle.write("\n")
  os.replace(temporary, path)


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """The rows of a JSON-lines file; a last line cut short (a run killed mid-write) is dropped."""
  if not os.path.exists(path):
    return []
  with open(path) as handle:
    lines = [line for line in handle if line.strip()]
  rows = [json.loads(line) for line in lines[:-1]]
  if lines:
    try:
      rows.append(json.loads(lines[-1]))
    except json.JSONDecodeError:
      pass
  return rows


def params_digest(params: Any) -> str:
  """sha256 of the parameters' bytes, leaves in tree order: equal digests mean equal parameters."""
  digest = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(params):
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return digest.hexdigest()


class MetricsWriter:
  """Appends one JSON line per logged step and mirrors scalars to TensorBoard.

  On resume from step s > 0, rows after s (written by the interrupted run after its last
  checkpoint) are dropped first, so the file reads as one uninterrupted run; a run that starts
  afresh (no checkpoint) starts an empty file.
  """

  def __init__(self, workdir: str, *, num_runs: int, run_labels: list[str], resume_step: int,
               tensorboard: bool = True, enabled: bool = True):
    self._num_runs = num_runs
    self._run_labels = run_labels
    self._enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tensorboard = None
    if not enabled:
      return
    kept = [row for row in read_jsonl(self.path) if resume_step and row["step"] <= resume_step]
    temporary = self.path + ".tmp"
    with open(temporary, "w") as handle:
      handle.writelines(json.dumps(row) + "\n" for row in kept)
    os.replace(temporary, self.path)
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tensorboard = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self._enabled:
      return
    row = {"step": int(step)}
    row.update({name: to_json_value(value, self._num_runs) for name, value in metrics.items()})
    with open(self.path, "a") as handle:
      handle.write(json.dumps(row) + "\n")
    if self._tensorboard is not None:
      for name, value in metrics.items():
        array = np.asarray(value)
        if array.ndim != 1:
          continue  # vector metrics (per-direction attributions) stay in metrics.jsonl
        for run, label in enumerate(self._run_labels):
          tag = name if self._num_runs == 1 else f"{name}/{label}"
          self._tensorboard.add_scalar(tag, float(array[run]), global_step=int(step))

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


class Progress:
  """Console progress: steps per second over the last interval, and the time left.

  Where absl logs at INFO (the binaries set it), a line goes to absl's log; otherwise (a script, a
  notebook) it is printed to stderr. ``enabled=False`` shows nothing.
  """

  def __init__(self, start_step: int, total_steps: int, *, enabled: bool = True):
    self._total = total_steps
    self._last_step = start_step
    self._last_time = time.perf_counter()
    self._enabled = enabled

  def report(self, step: int, loss: Any) -> None:
    now = time.perf_counter()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    remaining = (self._total - step) / max(rate, 1e-9)
    self._last_step, self._last_time = step, now
    if not self._enabled:
      return
    losses = np.atleast_1d(np.asarray(loss))
    shown = f"{losses[0]:.4f}" if losses.size == 1 else f"{losses.mean():.4f} (mean of {losses.size})"
    line = (f"step {step}/{self._total}  loss {shown}  {rate:.1f} steps/s  ETA "
            f"{_format_seconds(remaining)}")
    if logging.level_info():
      logging.info("%s", line)
    else:
      print(line, file=sys.stderr, flush=True)


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  minutes, seconds = divmod(seconds, 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
