"""A run's identity beyond its config: what determines its computation, recorded and checked on resume.

`run_fingerprint` describes the objective (its terms' names, functions, sites and weights, the
interventions), the model (name, sites, every parameter's path, shape and dtype), the optimizer state's
tree (a digest of its paths, shapes and dtypes), the refreshers, the dataset (name and array shapes)
and the warm start, as JSON that config.json keeps beside the config. Running `train` again in the
same workdir with anything here changed is refused (`check_fingerprint`), instead of resuming the
earlier run as if it were this one.

Functions are described by their qualified name (``module.qualname``): a function's closure (a
basis, a learning rate inside a schedule) is not seen, only which function it is.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from landscape.data import Dataset
from landscape.models import Model
from landscape.objectives import Hyperparameter
from landscape.objectives import Objective
from landscape.training._checkpoint import path_name
from landscape.training._config import ConfigError

# The key of config.json that holds the fingerprint, beside the config's own fields.
FINGERPRINT_KEY = "fingerprint"


class RunMismatchError(ConfigError):
  """``train`` was asked to resume a workdir that holds a different run (the message says what differs)."""


def describe_callable(fn: Any) -> str | None:
  """A stable text for a function: ``module.qualname`` (``partial(...)`` around a partial's function).

  A callable object is described by its class. None stays None.
  """
  if fn is None:
    return None
  if isinstance(fn, functools.partial):
    return f"partial({describe_callable(fn.func)})"
  target = fn if hasattr(fn, "__qualname__") else type(fn)
  module = getattr(target, "__module__", None)
  return f"{module}.{target.__qualname__}" if module else target.__qualname__


def describe_weight(weight: Any) -> str:
  """A term's weight as text: the number, the `Hyperparameter`'s repr, or "schedule <function>"."""
  if isinstance(weight, Hyperparameter):
    return repr(weight)
  if callable(weight):
    return f"schedule {describe_callable(weight)}"
  return repr(float(weight))


def tree_arrays(tree: Any) -> dict[str, str]:
  """path -> "dtype[shape]" for every array leaf, paths as a checkpoint's (see `path_name`)."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {path_name(path): _describe_array(leaf) for path, leaf in leaves}


def _describe_array(leaf: Any) -> str:
  return f"{np.dtype(leaf.dtype).name}{list(np.shape(leaf))}"


def _digest(described: Mapping[str, str]) -> str:
  text = "\n".join(f"{path} {array}" for path, array in sorted(described.items()))
  return hashlib.sha256(text.encode()).hexdigest()


def run_fingerprint(*, model: Model, objective: Objective, params: Any, opt_state: Any,
                    refreshers: Sequence[Any], dataset: Dataset,
                    warm_start: Mapping[str, Any] | None) -> dict[str, Any]:
  """What determines a run's computation beyond its config, as JSON (see the module docstring).

  ``params`` and ``opt_state`` are one run's (arrays or ShapeDtypeStructs, no run axis).
  ``warm_start`` is `WarmStart.identity` (None for the model's own initialisation).
  """
  terms = [{"name": t.name, "fn": describe_callable(t.fn), "weight": describe_weight(t.weight),
            "sites": list(t.sites), "sites_before": list(t.sites_before),
            "stateful": t.init is not None, "interventions": describe_callable(t.interventions)}
           for t in objective.terms]
  opt_arrays = tree_arrays(opt_state)
  fingerprint = {
      "objective": {"terms": terms, "interventions": describe_callable(objective.interventions)},
      "model": {"name": model.name, "sites": list(model.site_names), "params": tree_arrays(params)},
      "optimizer_state": {"arrays": len(opt_arrays), "digest": _digest(opt_arrays)},
      # A refresher with a `fingerprint()` (a `FixedValue`'s digest of its value) adds it.
      "refreshers": [{"name": getattr(r, "name", None), "kind": describe_callable(type(r)),
                      **({"fingerprint": r.fingerprint()} if hasattr(r, "fingerprint") else {})}
                     for r in refreshers],
      "dataset": {"name": dataset.name, "arrays": tree_arrays(dataset.arrays),
                  "eval_sets": {name: tree_arrays(batch) for name, batch in dataset.eval_sets.items()}},
      "warm_start": None if warm_start is None else dict(warm_start),
  }
  return json.loads(json.dumps(fingerprint, sort_keys=True))  # as config.json holds it


_MISSING = "(absent)"
_SHOWN = 8


def _differences(now: Any, then: Any, where: str) -> list[tuple[str, Any, Any]]:
  """(where, this call's value, the run's value) for each place the two JSON values differ."""
  if isinstance(now, Mapping) and isinstance(then, Mapping):
    found = []
    for key in sorted(now.keys() | then.keys()):
      found += _differences(now.get(key, _MISSING), then.get(key, _MISSING),
                            f"{where}.{key}" if where else str(key))
    return found
  if (isinstance(now, list) and isinstance(then, list) and
      all(isinstance(item, Mapping) for item in now + then)):
    found = []
    for index in range(max(len(now), len(then))):
      found += _differences(now[index] if index < len(now) else _MISSING,
                            then[index] if index < len(then) else _MISSING, f"{where}[{index}]")
    return found
  return [] if now == then else [(where, now, then)]


def _shown(value: Any) -> str:
  return _MISSING if value is _MISSING else repr(value)


def check_fingerprint(current: Mapping[str, Any], saved: Mapping[str, Any], *, workdir: str) -> None:
  """RunMismatchError naming every part of ``current`` that differs from ``saved`` (config.json's).

  Both come from `run_fingerprint`. The message says how to start afresh.
  """
  differing = _differences(dict(current), dict(saved), "")
  if not differing:
    return
  shown = "; ".join(f"{where}: {_shown(now)} here, {_shown(then)} in the run"
                    for where, now, then in differing[:_SHOWN])
  more = f" (and {len(differing) - _SHOWN} more)" if len(differing) > _SHOWN else ""
  parts = sorted({where.split(".")[0].split("[")[0] for where, _, _ in differing})
  raise RunMismatchError(
      f"{workdir} holds a run with a different {', '.join(parts)}: {shown}{more}. A workdir resumes "
      "only the run that started there: to train this one, use a fresh workdir (or delete "
      f"{workdir}); to resume that run, call train with what it was started with")


def check_checkpoint_arrays(saved: Mapping[str, tuple[tuple[int, ...], Any]], state: Any, *,
                            step: int, workdir: str) -> None:
  """RunMismatchError, before restoring, when a checkpoint's arrays are not those of ``state``.

  ``saved``: path -> (shape, dtype) as the checkpoint holds them (`Checkpoints.saved_arrays`);
  ``state``: the run-stacked abstract state to restore into. Catches a changed optimizer, model,
  stateful term or refresher in a workdir whose config.json predates the fingerprint.
  """
  expected = tree_arrays(state)
  found = {path: f"{np.dtype(dtype).name}{list(shape)}" for path, (shape, dtype) in saved.items()}
  differing = sorted(path for path in expected.keys() | found.keys()
                     if expected.get(path, _MISSING) != found.get(path, _MISSING))
  if not differing:
    return
  shown = "; ".join(f"{path}: {expected.get(path, _MISSING)} here, {found.get(path, _MISSING)} in "
                    "the checkpoint" for path in differing[:_SHOWN])
  more = f" (and {len(differing) - _SHOWN} more)" if len(differing) > _SHOWN else ""
  fields = sorted({path.split("/")[0] for path in differing})
  raise RunMismatchError(
      f"the checkpoint of step {step} in {workdir}/checkpoints holds a different train state "
      f"({', '.join(fields)}): {shown}{more}. The optimizer, the model, a stateful term or a "
      f"refresher differs from the run's: use a fresh workdir (or delete {workdir}), or call train "
      "with what the run was started with")
