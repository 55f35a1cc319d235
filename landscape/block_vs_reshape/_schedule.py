"""How long and how often: the training loop's settings for one task of the experiment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from landscape import training


def loop_config(config: ml_collections.ConfigDict, steps: int | None = None,
                batch_size: int | None = None,
                identity: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """The training loop's fields for one task: the config's, with the task's steps and batch size.

  Every run is evaluated ``config.evaluations`` times (plus at step 0), at equal intervals, and
  checkpointed every ``checkpoint_every`` steps rounded down to whole evaluation intervals (at
  least one, at most ``steps``): every compiled call then has the one length of an interval, so
  each arm compiles its chunk once (a checkpoint between evaluations would need a second length).
  ``identity`` (the task, arm and settings that shape the run beyond the loop's own fields) goes in
  as ``experiment``, so the loop's config.json records it and a rerun with different settings is
  refused, not resumed.
  """
  loop = training.loop_config()
  for field in loop.keys():
    if field in config:
      loop[field] = config[field]
  loop.steps = steps or config.steps
  loop.batch_size = batch_size or config.batch_size
  loop.eval_every = max(1, -(-loop.steps // config.evaluations))
  loop.steps_per_call = loop.eval_every
  loop.log_every = loop.eval_every
  whole_intervals = max(1, config.checkpoint_every // loop.eval_every) * loop.eval_every
  loop.checkpoint_every = min(whole_intervals, loop.steps)
  if identity is not None:
    loop.experiment = ml_collections.ConfigDict(dict(identity))
  return loop


def settings_identity(settings: ml_collections.ConfigDict) -> dict[str, Any]:
  """A settings section as plain values, without ``steps`` (more steps continue a run)."""
  return {key: value for key, value in settings.to_dict().items() if key != "steps"}
