"""Warm starts: runs that begin from given parameters, or part of them, instead of the model's init.

``train(..., initial_params=...)`` takes the parameters as arrays (see `check_initial_params` for the
forms), so they enter the train state as arguments of the compiled initialisation, never as constants
folded into a program. `load_params` reads them from another run's checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape.sites import BadInputError
from landscape.training._checkpoint import Checkpoints
from landscape.training._metrics import params_digest


class WarmStartError(BadInputError):
  """Initial parameters that do not fit the model, or a checkpoint that cannot provide them."""


@dataclasses.dataclass(frozen=True)
class WarmStart:
  """Checked initial parameters for the runs of one `train` call.

  Attributes:
    params: the given part of the model's parameters (nested dicts of NumPy arrays in the model's
      dtypes): run-stacked (leading axis: runs) when ``per_run``, else one set for every run.
    per_run: whether each run has its own set.
  """

  params: Any
  per_run: bool

  def for_run(self, index: int) -> Any:
    """Run ``index``'s initial parameters (the given part only)."""
    if not self.per_run:
      return self.params
    return jax.tree_util.tree_map(lambda leaf: leaf[index], self.params)

  @property
  def identity(self) -> dict[str, Any]:
    """What the run's fingerprint records: the layout, the given paths and a digest of the values."""
    paths = ["/".join(str(getattr(key, "key", key)) for key in path)
             for path, _ in jax.tree_util.tree_flatten_with_path(self.params)[0]]
    return {"layout": "one set per run" if self.per_run else "one set for every run",
            "params": paths, "digest": params_digest(self.params)}


def merge_params(fresh: Any, given: Any) -> Any:
  """``fresh`` with the leaves of ``given`` (a sub-tree of nested dicts) put in their place.

  Works on traced values: `init_state` calls it on the model's initialisation.
  """
  if given is None:
    return fresh
  merged = dict(fresh)
  for key, value in given.items():
    merged[key] = (merge_params(fresh[key], value) if isinstance(value, Mapping)
                   else jnp.asarray(value, fresh[key].dtype))
  return merged


def _where(path: Sequence[str]) -> str:
  return "initial_params" + "".join(f"[{key!r}]" for key in path)


def _pairs(given: Any, model: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any, Any]]:
  """(path, given leaf, model leaf) for every leaf of ``given``, which must follow ``model``'s keys."""
  if isinstance(given, Mapping):
    if not isinstance(model, Mapping):
      raise WarmStartError(f"{_where(path)} is a dict (keys {sorted(given)}), but the model's "
                           f"parameter there is an array of shape {tuple(model.shape)}")
    if not given:
      raise WarmStartError(f"{_where(path)} is an empty dict: it gives no parameters")
    pairs = []
    for key, value in given.items():
      if key not in model:
        raise WarmStartError(f"{_where(path + (key,))}: the model has no such parameter; it has "
                             f"{sorted(model)} there")
      pairs += _pairs(value, model[key], path + (key,))
    return pairs
  if isinstance(model, Mapping):
    raise WarmStartError(f"{_where(path)} is a {type(given).__name__}, but the model has a sub-tree "
                         f"there (keys {sorted(model)}); give a dict")
  if given is None or not hasattr(given, "shape") and not isinstance(given, (int, float, list)):
    raise WarmStartError(f"{_where(path)} is {given!r}; expected an array")
  return [(path, given, model)]


def _as_model_dtype(path: tuple[str, ...], leaf: Any, model: Any) -> np.ndarray:
  array = np.asarray(jax.device_get(leaf))
  target = np.dtype(model.dtype)
  same_kind = (np.issubdtype(array.dtype, np.floating) and jnp.issubdtype(target, jnp.floating)) or (
      np.issubdtype(array.dtype, np.integer) and jnp.issubdtype(target, jnp.integer))
  if not same_kind and array.dtype != target:
    raise WarmStartError(f"{_where(path)} has dtype {array.dtype}; the model's parameter is "
                         f"{target.name}")
  return array.astype(target)


def _nest(leaves: Sequence[tuple[tuple[str, ...], np.ndarray]]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, leaf in leaves:
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = leaf
  return tree


def check_initial_params(initial_params: Any, model_params: Any, num_runs: int) -> WarmStart:
  """Checks ``initial_params`` against the model's (abstract) parameters; WarmStartError if unfit.

  ``initial_params`` is any part of the model's parameter tree (nested dicts with the model's keys;
  leaves not given keep the model's initialisation), in one of three forms:

  - one set for every run: each leaf of the model's shape;
  - run-stacked: each leaf of shape (runs, *the model's shape), run r's set at index r;
  - a list with one set per run (each of the model's shapes).

  Leaves are cast to the model's dtypes (a float for a float, an integer for an integer).
  Checked on the host, before anything is compiled.
  """
  if isinstance(initial_params, (list, tuple)):
    if len(initial_params) != num_runs:
      raise WarmStartError(f"initial_params is a list of {len(initial_params)} sets; this call "
                           f"trains {num_runs} run(s): give one per run, or one set for all")
    per_run = [check_initial_params(one, model_params, 1) for one in initial_params]
    paths = [sorted(warm.identity["params"]) for warm in per_run]
    for index, run_paths in enumerate(paths):
      if run_paths != paths[0]:
        raise WarmStartError(f"initial_params[{index}] gives {run_paths}, initial_params[0] gives "
                             f"{paths[0]}: every run's set must give the same parameters")
      if per_run[index].per_run:
        raise WarmStartError(f"initial_params[{index}] is run-stacked; in a list, give each run's "
                             "set of the model's shapes")
    stacked = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves),
                                     *[warm.params for warm in per_run])
    return WarmStart(params=stacked, per_run=True)
  if not isinstance(initial_params, Mapping):
    raise WarmStartError(f"initial_params is a {type(initial_params).__name__}; expected a dict of "
                         "the model's parameters (or part of them), or a list with one per run")
  leaves, layouts = [], set()
  for path, given, model in _pairs(initial_params, model_params):
    array = _as_model_dtype(path, given, model)
    shape = tuple(model.shape)
    if array.shape == shape:
      layouts.add("shared")
    elif array.shape == (num_runs,) + shape:
      layouts.add("stacked")
    else:
      raise WarmStartError(f"{_where(path)} has shape {array.shape}; the model's parameter has "
                           f"shape {shape} (one set for every run), or {(num_runs,) + shape} "
                           f"run-stacked for the {num_runs} run(s) of this call")
    leaves.append((path, array))
  if len(layouts) > 1:
    raise WarmStartError("initial_params mixes leaves of the model's shapes with run-stacked "
                         "ones; give one set for every run or a run-stacked set, not both")
  return WarmStart(params=_nest(leaves), per_run=layouts == {"stacked"})


def load_params(workdir: str, *, step: int | None = None, run: int | None = None) -> dict[str, Any]:
  """The parameters another `train` call saved in ``workdir``, as NumPy, for ``initial_params``.

  Args:
    workdir: the other run's workdir (its checkpoints/ are read, never changed).
    step: the checkpoint's step; the latest by default.
    run: one run's parameters (its index on the run axis: seed and grid point, see `run_table`);
      None: every run's, run-stacked.

  Take part of them with plain indexing, keeping the path: ``{"encoder": params["encoder"]}``.
  """
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise WarmStartError(f"load_params: {workdir} has no checkpoints/ (is it a workdir train wrote?)")
  checkpoints = Checkpoints(directory, max_to_keep=None, create=False)
  try:
    steps = checkpoints.all_steps()
    if not steps:
      raise WarmStartError(f"load_params: {directory} holds no complete checkpoint")
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise WarmStartError(f"load_params: step={step} is not among the checkpoints in {directory}: "
                           f"{sorted(steps)}")
    params = jax.tree_util.tree_map(np.asarray, checkpoints.restore_as_saved(step)["params"])
  finally:
    checkpoints.close()
  num_runs = jax.tree_util.tree_leaves(params)[0].shape[0]
  if run is None:
    return params
  if not -num_runs <= run < num_runs:
    raise WarmStartError(f"load_params: run={run}, but the checkpoint in {directory} holds "
                         f"{num_runs} run(s)")
  return jax.tree_util.tree_map(lambda leaf: leaf[run], params)
