"""The train state, the run view terms and refreshers read, and the refresher protocol."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from landscape.objectives import Objective
from landscape.objectives import RunView
from landscape.sites import BadInputError


@flax.struct.dataclass
class TrainState:
  """Everything a run carries from step to step, as one pytree.

  Under the loop every field but ``step`` has a leading run axis (one entry per run trained in the
  program); ``step`` is one int32 scalar shared by every run, so a refresh or a refit due at a step
  is a real branch taken by all runs together (see `STATE_AXES`).

  Attributes:
    step: int32 scalar, the number of updates applied so far.
    params: the model's parameters (a nested dict of arrays).
    opt_state: the optimizer chain's state.
    rng: a PRNG key (uint32[2]), split at every step.
    data_key: the key the dataset samples batches from, with the step.
    hparams: name -> this run's hyper-parameter: an int32 scalar where the grid gave an integer
      (a discrete choice, such as an index), a float32 scalar otherwise (see `hparam_value`).
    term_states: term name -> a stateful loss term's own state (an adversary's probe).
    term_opt_states: term name -> the state of that term's own optimizer.
    refreshed: refresher name -> its value (a basis refitted during training).
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  data_key: jax.Array
  hparams: dict[str, jax.Array]
  term_states: dict[str, Any]
  term_opt_states: dict[str, Any]
  refreshed: dict[str, Any]


# The vmap axes of a run-stacked state (and of its run view): none for the shared step, 0 elsewhere.
STATE_AXES = TrainState(step=None, params=0, opt_state=0, rng=0, data_key=0, hparams=0,
                        term_states=0, term_opt_states=0, refreshed=0)
RUN_VIEW_AXES = RunView(step=None, hparams=0, refreshed=0, term_states=0)


def hparam_value(name: str, value: Any) -> jax.Array:
  """A hyper-parameter as the state holds it: int32 for an integer (a discrete choice: an index, a
  count; bools are integers), float32 for any other real number. BadInputError otherwise."""
  if isinstance(value, numbers.Integral) or (hasattr(value, "dtype") and
                                              jnp.issubdtype(value.dtype, jnp.integer)):
    return jnp.asarray(value, jnp.int32)
  if isinstance(value, numbers.Real) or (hasattr(value, "dtype") and
                                         jnp.issubdtype(value.dtype, jnp.floating)):
    return jnp.asarray(value, jnp.float32)
  raise BadInputError(f"hyper-parameter {name!r}={value!r} ({type(value).__name__}): expected an "
                      "integer (a discrete choice) or a real number")


def check_hparam_grid(hparam_grid: Sequence[Mapping[str, Any]] | None) -> None:
  """BadInputError, before compiling, for a grid whose runs could not be stacked into one program.

  Every point must name the same hyper-parameters (not "seed", which the loop assigns), each a
  finite scalar, integer at every point or at none (one name is one dtype: int32 or float32).
  """
  if hparam_grid is None:
    return
  if isinstance(hparam_grid, Mapping) or not len(hparam_grid):
    raise BadInputError(f"hparam_grid={hparam_grid!r}: expected a non-empty list of "
                        "{name: value} points")
  names = None
  for index, point in enumerate(hparam_grid):
    if not isinstance(point, Mapping):
      raise BadInputError(f"hparam_grid[{index}]={point!r}: expected a mapping name -> value")
    if "seed" in point:
      raise BadInputError(f"hparam_grid[{index}] names 'seed'; seeds come from config.seed and "
                          "config.num_seeds")
    if names is None:
      names = sorted(point)
    elif sorted(point) != names:
      raise BadInputError(f"hparam_grid[{index}] names {sorted(point)}, hparam_grid[0] names "
                          f"{names}: every point must name the same hyper-parameters")
    for name, value in point.items():
      held = hparam_value(name, value)
      if not math.isfinite(float(held)):
        raise BadInputError(f"hparam_grid[{index}][{name!r}]={value!r}: not finite")
  for name in names:
    kinds = {hparam_value(name, point[name]).dtype for point in hparam_grid}
    if len(kinds) > 1:
      raise BadInputError(f"hparam_grid: {name!r} is an integer at some points and not at others "
                          f"({[point[name] for point in hparam_grid]}); give one type")


def stack_runs(states: Sequence[TrainState]) -> TrainState:
  """One state for runs trained together: every field stacked on a leading run axis, but ``step``.

  The runs share the step: that of the first is kept.
  """
  stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *states)
  return stacked.replace(step=states[0].step)


class Refresher(Protocol):
  """State kept in ``state.refreshed[name]`` and renewed at every step, outside the gradient.

  A basis refitted every N steps is one (see `landscape.directions.refit_basis`). ``update`` runs at
  the start of each step, inside the vmap over runs, before the loss, with the parameters the step
  begins from. ``step`` is the unbatched int32 scalar (a `jax.lax.cond` on it is a real branch);
  ``run.refreshed`` maps refresher name -> value, the refreshers earlier in the list already
  updated at this step. A refresher may also have a ``fingerprint() -> str`` (a digest of what it
  holds that its name and type do not say, as `FixedValue` has): the run's fingerprint records it,
  so resuming with another is refused.
  """

  name: str

  def init(self, key: jax.Array, params: Any) -> Any:
    ...

  def update(self, value: Any, *, params: Any, step: jax.Array, key: jax.Array,
             run: RunView) -> Any:
    ...


@dataclasses.dataclass(frozen=True, eq=False)
class FixedValue:
  """A refresher whose value never changes: arrays every run holds in ``state.refreshed[name]``.

  They reach the compiled step as data, not as constants of its program, so runs (or arms) that
  differ only in them share one compiled program: a gradient mask, the spans of feature sets, a
  flag that switches a scheduled refit on or off. ``value`` is one run's (a pytree of arrays). The
  run's fingerprint holds a digest of it, so resuming with another value is refused.
  """

  name: str
  value: Any

  def init(self, key: jax.Array, params: Any) -> Any:
    del key, params
    return self.value

  def update(self, value: Any, *, params: Any, step: jax.Array, key: jax.Array,
             run: RunView) -> Any:
    del params, step, key, run
    return value

  def fingerprint(self) -> str:
    """A digest of the value: its tree structure, and each leaf's dtype, shape and bytes."""
    digest = hashlib.sha256(str(jax.tree_util.tree_structure(self.value)).encode())
    for leaf in jax.tree_util.tree_leaves(self.value):
      leaf = np.asarray(leaf)
      digest.update(f"{leaf.dtype}{leaf.shape}".encode())
      digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


# A term's metrics are "loss/{name}", "weight/{name}" and "{name}/{metric}": a term named like the
# loop's own metrics (or an evaluation set's prefix) would overwrite them or be read as them.
RESERVED_TERM_NAMES = frozenset({"loss", "weight", "eval", "transform", "grad_norm", "update_norm",
                                 "param_norm", "step"})
# Refresher values live beside the state's own fields; a refresher named like one would read, in
# code written for the shared dict the state used to have, as that field.
RESERVED_REFRESHER_NAMES = frozenset(TrainState.__dataclass_fields__) | {"extra", "terms",
                                                                        "term_optimizers"}


def _reserved_term_name(name: str) -> bool:
  return name in RESERVED_TERM_NAMES or (name.startswith("transform") and
                                         name.removeprefix("transform").isdigit())


def check_names(objective: Objective, refreshers: Sequence[Refresher]) -> None:
  """BadInputError naming every duplicate or reserved term or refresher name (before compiling)."""
  problems = []
  for what, names, reserved in (
      ("term", [t.name for t in objective.terms], _reserved_term_name),
      ("refresher", [getattr(r, "name", None) for r in refreshers],
       lambda name: name in RESERVED_REFRESHER_NAMES)):
    malformed = [name for name in names if not isinstance(name, str) or not name]
    if malformed:
      problems.append(f"{what} names must be non-empty strings, got {malformed}")
    duplicates = sorted({name for name in names if names.count(name) > 1 and name not in malformed})
    if duplicates:
      problems.append(f"duplicate {what} names {duplicates}")
    taken = sorted({name for name in names if name not in malformed and reserved(name)})
    if taken:
      problems.append(f"reserved {what} names {taken}")
  if problems:
    raise BadInputError("; ".join(problems) + " (reserved term names: "
                        f"{sorted(RESERVED_TERM_NAMES)} and transform<N>; reserved refresher "
                        f"names: {sorted(RESERVED_REFRESHER_NAMES)})")
