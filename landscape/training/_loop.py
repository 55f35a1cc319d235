"""The training loop: S runs in one compiled program, sharded, checkpointed, guarded and logged.

`train` validates everything it can before compiling, resumes from the latest complete checkpoint in
``workdir``, runs ``steps_per_call`` steps per compiled call (the batch is sampled inside the call from
the dataset's arrays, the data key and the step), fetches metrics once per call, evaluates on every
eval set, checkpoints every ``checkpoint_every`` steps and on SIGTERM, and stops when the loss,
gradient, update or parameters go non-finite, naming the step and the term, leaving the last good
checkpoint as it was.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from landscape.data import Dataset
from landscape.models import Model
from landscape.objectives import CLASSIFICATION_METRICS
from landscape.objectives import InterventionsFn
from landscape.objectives import Objective
from landscape.objectives import RunView
from landscape.objectives import check_interventions_fn
from landscape.objectives import per_example_accuracy
from landscape.objectives import per_example_cross_entropy
from landscape.sites import BadInputError
from landscape.training import _sharding
from landscape.training._checkpoint import Checkpoints
from landscape.training._config import ConfigError
from landscape.training._config import validate_loop_config
from landscape.training._identity import FINGERPRINT_KEY
from landscape.training._identity import RunMismatchError
from landscape.training._identity import check_checkpoint_arrays
from landscape.training._identity import check_fingerprint
from landscape.training._identity import run_fingerprint
from landscape.training._metrics import MetricsWriter
from landscape.training._metrics import Progress
from landscape.training._metrics import params_digest
from landscape.training._metrics import per_run_json_value
from landscape.training._metrics import read_jsonl
from landscape.training._metrics import write_json_atomically
from landscape.training._parallelism import compile_chunk
from landscape.training._state import RUN_VIEW_AXES
from landscape.training._state import Refresher
from landscape.training._state import TrainState
from landscape.training._state import check_hparam_grid
from landscape.training._state import check_names
from landscape.training._step import ExtraArgsFn
from landscape.training._step import MetricFn
from landscape.training._step import compile_init
from landscape.training._step import init_state
from landscape.training._step import make_eval_step
from landscape.training._step import run_view
from landscape.training._warm_start import check_initial_params

# (run-stacked params, run-stacked RunView) -> name -> (S, ...) values, logged at every evaluation.
Evaluator = Callable[[Any, RunView], Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class LastAndInterim:
  """An evaluator that measures one thing at a run's last evaluation and another before it.

  ``last`` runs at the last step's evaluation (the one tables and criteria read), ``interim`` at
  every earlier one (the curves over training), or nothing there when None: decodability at every
  site at the end and at one site before, say. Pass it to `train` among the ``evaluators``.
  """

  last: Evaluator
  interim: Evaluator | None = None

  def at(self, *, last: bool) -> Evaluator | None:
    return self.last if last else self.interim


class NonFiniteLossError(FloatingPointError):
  """Training went non-finite (a loss term, the gradient, the update or the parameters).

  The message names the step and the term(s) that went bad, or the norms when every term was finite.
  """


class Preempted(RuntimeError):
  """SIGTERM arrived; the state was checkpointed and running the same command again resumes."""


@dataclasses.dataclass
class TrainResult:
  """What `train` leaves behind besides the files in ``workdir``.

  state: the final run-stacked state (leading axis: runs; the step shared). summary: the contents
  of summary.json.
  evaluations: step -> {"eval/{set}/{metric}": (S,) array}, every evaluation of this invocation.
  """

  state: TrainState
  summary: dict[str, Any]
  evaluations: dict[int, dict[str, np.ndarray]]


# Fields that may change between a run and its resumption: they change how, not what, it computes.
OPERATIONAL_FIELDS = frozenset({
    "steps", "log_every", "eval_every", "interim_eval_sets", "eval_batch_size", "checkpoint_every",
    "max_to_keep", "async_checkpoints", "steps_per_call", "parallelism", "mesh", "distributed",
    "tensorboard"})


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def run_identity(config: ml_collections.ConfigDict,
                 hparam_grid: Sequence[Mapping[str, float]] | None = None,
                 fingerprint: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """What config.json records of a run: its config, its grid of hyper-parameters and (under
  ``"fingerprint"``) what `run_fingerprint` says of its objective, model, optimizer and data."""
  identity = json.loads(config.to_json_best_effort())
  if FINGERPRINT_KEY in identity:
    raise ConfigError(f"config.{FINGERPRINT_KEY}: the name is reserved for the run's fingerprint "
                      "in config.json; rename the field")
  identity["hparam_grid"] = [dict(point) for point in hparam_grid or []]
  if fingerprint is not None:
    identity[FINGERPRINT_KEY] = dict(fingerprint)
  return identity


def check_resumed_config(config: ml_collections.ConfigDict, saved: Mapping[str, Any],
                         hparam_grid: Sequence[Mapping[str, float]] | None = None) -> None:
  """ConfigError naming every field that differs from the run being resumed (operational ones aside).

  ``saved`` is the run's config.json (see `run_identity`); the grid of hyper-parameters is compared
  as one field. The fingerprint config.json also holds is not compared here: `train` checks it
  (see `check_fingerprint`).
  """
  current = _flatten(run_identity(config, hparam_grid))
  saved = _flatten({key: value for key, value in saved.items() if key != FINGERPRINT_KEY})
  differing = sorted(key for key in current.keys() | saved.keys()
                     if key.split(".")[0] not in OPERATIONAL_FIELDS and current.get(key) != saved.get(key))
  if differing:
    details = ", ".join(f"config.{key}={current.get(key)!r} (the run has {saved.get(key)!r})"
                        for key in differing)
    raise ConfigError(f"resuming with a different config: {details}. Use a fresh --workdir, or set "
                      "these back")


def run_seeds(config: ml_collections.ConfigDict) -> list[int]:
  return [config.seed + index for index in range(config.num_seeds)]


def run_table(config: ml_collections.ConfigDict,
              hparam_grid: Sequence[Mapping[str, float]] | None = None) -> list[dict[str, Any]]:
  """One entry per run, in run-axis order: every grid point with every seed, grid point major."""
  return [{"seed": seed, **point} for point in (hparam_grid or [{}]) for seed in run_seeds(config)]


def _boundaries(config: ml_collections.ConfigDict) -> list[int]:
  return [every for every in (config.steps_per_call, config.eval_every, config.checkpoint_every) if every]


def _next_stop(step: int, config: ml_collections.ConfigDict) -> int:
  """The next step at which the host must act (evaluate, checkpoint, or end a compiled call)."""
  candidates = [(step // every + 1) * every for every in _boundaries(config)]
  return min(candidates + [config.steps])


def _due(step: int, every: int, total: int) -> bool:
  return step == total or (every > 0 and step % every == 0)


class _SigtermFlag:
  """Records SIGTERM (preemption) so the loop can checkpoint at the next call boundary."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: checkpointing at the next call boundary")
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


GUARDED_METRICS = ("loss", "grad_norm", "update_norm", "param_norm")


def _first_bad_step(metrics: Mapping[str, np.ndarray]) -> tuple[int, list[str]] | None:
  """(index within the call, names of the offending terms) of the first non-finite step, or None.

  A step is bad when its loss, gradient, update or resulting parameters are not finite: a state
  saved after such a step would not be a good checkpoint.
  """
  bad = np.zeros(np.shape(metrics["loss"]), bool)
  for name in GUARDED_METRICS:
    bad |= ~np.isfinite(metrics[name])
  bad_steps = np.nonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0]
  if not len(bad_steps):
    return None
  index = int(bad_steps[0])
  terms = [name.removeprefix("loss/") for name, values in metrics.items()
           if name.startswith("loss/") and not np.all(np.isfinite(values[index]))]
  return index, terms


def non_finite_error(metrics: Mapping[str, np.ndarray], bad: tuple[int, list[str]], *,
                     chunk_start: int, last_good: int | None, workdir: str) -> NonFiniteLossError:
  """The error for the bad step `_first_bad_step` found in a chunk that began at ``chunk_start``.

  It names the step, the term(s) that went non-finite (or the norms when every term was finite),
  every term's value, and the last good checkpoint (``last_good``), which is left untouched.
  """
  index, terms = bad
  bad_step = chunk_start + index
  values = {name.removeprefix("loss/"): metrics[name][index].tolist()
            for name in metrics if name.startswith("loss/")}
  norms = {name: metrics[name][index].tolist() for name in GUARDED_METRICS[1:]}
  culprit = (f"term(s) {terms} went non-finite" if terms else
             f"every term was finite but not the gradient, update or parameters ({norms})")
  kept = ("no checkpoint had been written yet" if last_good is None else
          f"the last good checkpoint (step {last_good}) is untouched in {workdir}/checkpoints")
  return NonFiniteLossError(f"training went non-finite at step {bad_step} "
                            f"(the update logged as step {bad_step + 1}): "
                            f"{culprit}; term values {values}; {kept}")


def _write_chunk_metrics(writer: MetricsWriter, metrics: Mapping[str, np.ndarray], *,
                         chunk_start: int, num_steps: int, bad: tuple[int, list[str]] | None,
                         config: ml_collections.ConfigDict) -> None:
  """Writes the chunk's rows due for logging; with a bad step, every row up to and including it."""
  rows = range(num_steps) if bad is None else range(bad[0] + 1)
  for index in rows:
    logged_step = chunk_start + index + 1
    if _due(logged_step, config.log_every, config.steps) or bad is not None:
      writer.write(logged_step, {name: values[index] for name, values in metrics.items()})


def stacked_run_view(state: TrainState) -> RunView:
  """A run-stacked state's run view, its shared step repeated per run: every leaf run-stacked."""
  num_runs = jax.tree_util.tree_leaves(state.params)[0].shape[0]
  return run_view(state)._replace(step=jnp.broadcast_to(state.step, (num_runs,)))


def _evaluator(*, model: Model, dataset: Dataset, metric_fns: Mapping[str, MetricFn],
               interventions: InterventionsFn | None, eval_batch_size: int,
               device_put: Callable[[Any], Any]):
  """Returns ``evaluate(params, run, set_names=None) -> {"eval/{set}/{metric}": (S,) array}`` over
  the eval sets named (every set when None).

  ``params`` and ``run`` (a `RunView`) are run-stacked, the step shared.
  """
  eval_step = jax.vmap(make_eval_step(model=model, metric_fns=metric_fns,
                                      interventions=interventions),
                       in_axes=(0, RUN_VIEW_AXES, None, None))

  def over_set(params, run, chunks, valid_CxE):
    def accumulate(totals, chunk_and_valid):
      chunk, valid_E = chunk_and_valid
      sums = eval_step(params, run, chunk, valid_E)
      return jax.tree_util.tree_map(jnp.add, totals, sums), None

    zeros = jax.eval_shape(
        lambda: eval_step(params, run, jax.tree_util.tree_map(lambda x: x[0], chunks),
                          valid_CxE[0]))
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
    totals, _ = jax.lax.scan(accumulate, zeros, (chunks, valid_CxE))
    return {name: value_sum / jnp.maximum(weight_sum, 1e-12)
            for name, (value_sum, weight_sum) in totals.items()}

  compiled = jax.jit(over_set, compiler_options=_sharding.compiler_options())
  sets = {}
  for set_name, batch in dataset.eval_sets.items():
    size = len(next(iter(batch.values())))
    # Every set is padded to whole chunks of one size, so sets of any size share one compiled program.
    chunk = eval_batch_size
    num_chunks = -(-size // chunk)
    padding = num_chunks * chunk - size
    pad = lambda x: np.concatenate([np.asarray(x), np.repeat(np.asarray(x)[:1], padding, 0)], 0)
    chunks = {key: pad(value).reshape((num_chunks, chunk) + np.shape(value)[1:])
              for key, value in batch.items()}
    valid = (np.arange(num_chunks * chunk) < size).astype(np.float32).reshape(num_chunks, chunk)
    sets[set_name] = device_put((chunks, valid))

  def evaluate(params, run: RunView, set_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    results = {}
    for set_name in sets if set_names is None else set_names:
      chunks, valid = sets[set_name]
      for metric, values in _sharding.fetch(compiled(params, run, chunks, valid)).items():
        results[f"eval/{set_name}/{metric}"] = values
    return results

  return evaluate


def interim_eval_sets(config: ml_collections.ConfigDict, dataset: Dataset) -> tuple[str, ...]:
  """The eval sets evaluated before the last step (``config.interim_eval_sets``; "": every set).

  Raises ConfigError, naming the field and its value, for a set the dataset lacks.
  """
  value = config.get("interim_eval_sets", "")  # a config made before the field existed: every set
  names = tuple(name.strip() for name in value.split(",") if name.strip())
  unknown = [name for name in names if name not in dataset.eval_sets]
  if unknown:
    raise ConfigError(f"config.interim_eval_sets={value!r}: {unknown} not among the eval sets of "
                      f"{dataset.name} ({sorted(dataset.eval_sets)})")
  return names or tuple(dataset.eval_sets)


class _Evaluations:
  """Evaluates a run-stacked state on the eval sets and with every evaluator; keeps and logs it.

  The last step's evaluation covers every eval set; earlier ones, ``interim_sets``. A plain
  evaluator is called at every evaluation; a `LastAndInterim` calls its part for the stage.
  """

  def __init__(self, evaluate, evaluators: Sequence[Evaluator | LastAndInterim],
               writer: MetricsWriter, *,
               last_step: int, interim_sets: Sequence[str]):
    self._evaluate = evaluate
    self._evaluators = evaluators
    self._writer = writer
    self._last_step = last_step
    self._interim_sets = tuple(interim_sets)
    self.by_step: dict[int, dict[str, np.ndarray]] = {}

  def __call__(self, step: int, state: TrainState, *, log: bool = True) -> None:
    last = step == self._last_step
    results = self._evaluate(state.params, run_view(state), None if last else self._interim_sets)
    for evaluator in self._evaluators:
      if isinstance(evaluator, LastAndInterim):
        evaluator = evaluator.at(last=last)
      if evaluator is not None:
        results.update(_sharding.fetch(dict(evaluator(state.params, stacked_run_view(state)))))
    self.by_step[step] = results
    if log:
      self._writer.write(step, results)


def _open_checkpoints(config: ml_collections.ConfigDict, workdir: str,
                      hparam_grid: Sequence[Mapping[str, float]] | None,
                      fingerprint: Mapping[str, Any], *, is_main: bool) -> tuple[Checkpoints, int]:
  """(the run's checkpoints, the step to start from); checks a resumed run's config.json, writes it.

  Resuming, the config and the fingerprint must be the run's (ConfigError, `RunMismatchError`).
  A config.json written before fingerprints existed is trusted: the run resumes and its
  config.json gains this fingerprint.
  """
  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), max_to_keep=config.max_to_keep,
                            async_save=config.async_checkpoints)
  try:
    start_step = checkpoints.latest_step() or 0
    if start_step > config.steps:
      raise ConfigError(f"config.steps={config.steps}: the run in {workdir} is already at step "
                        f"{start_step}; ask for at least that many steps, or use a fresh --workdir")
    config_path = os.path.join(workdir, "config.json")
    if start_step and os.path.exists(config_path):
      with open(config_path) as handle:
        saved = json.load(handle)
      check_resumed_config(config, saved, hparam_grid)
      if FINGERPRINT_KEY in saved:
        check_fingerprint(fingerprint, saved[FINGERPRINT_KEY], workdir=workdir)
      else:
        logging.warning("%s: config.json predates run fingerprints; resuming on the config alone",
                        workdir)
  except BaseException:
    checkpoints.close()
    raise
  if is_main:
    write_json_atomically(config_path, run_identity(config, hparam_grid, fingerprint))
  return checkpoints, start_step


def _placed_like(abstract: TrainState, shardings: Any) -> TrainState:
  """The abstract state laid out as ``shardings``: what a chunk is compiled for before it runs."""
  return jax.tree_util.tree_map(
      lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
      abstract, shardings)


def _stack_on_host(states: Sequence[TrainState]) -> TrainState:
  """`stack_runs` in NumPy: the same values, without compiling a stack per leaf shape."""
  stacked = jax.tree_util.tree_map(lambda *leaves: np.stack([np.asarray(leaf) for leaf in leaves]),
                                   *states)
  return stacked.replace(step=states[0].step)


def _restore(checkpoints: Checkpoints, step: int, abstract: TrainState, shardings: Any, *,
             workdir: str) -> TrainState:
  """The state saved at ``step``, laid out as ``shardings``; `RunMismatchError` first if the
  checkpoint's arrays are not ``abstract``'s (a changed optimizer, say)."""
  saved = checkpoints.saved_arrays(step)
  if saved is not None:
    check_checkpoint_arrays(saved, abstract, step=step, workdir=workdir)
  return checkpoints.restore(step, _placed_like(abstract, shardings))


class ClassificationMetricsError(BadInputError):
  """Classification metrics asked of a model whose outputs are not logits over the dataset's labels."""


_CLASSIFICATION_FNS = (per_example_cross_entropy, per_example_accuracy)


def check_classification_metrics(model: Model, params: Any, dataset: Dataset,
                                 eval_metrics: Mapping[str, MetricFn]) -> None:
  """ClassificationMetricsError, before compiling, when classification metrics cannot mean anything.

  Where ``eval_metrics`` holds landscape's classification metrics (`CLASSIFICATION_METRICS`, the
  default, or their functions), the model's outputs on every eval set (`jax.eval_shape`, nothing
  computed) must be logits ``labels.shape + (C,)`` over integer labels, with C the dataset's
  ``info["num_classes"]`` (or ``info["vocab_size"]``, for a next-token model) where it says one,
  else more than the largest label. An autoencoder's reconstruction is not: its "accuracy" would
  be a number without a meaning.
  """
  named = sorted(name for name, fn in eval_metrics.items() if fn in _CLASSIFICATION_FNS)
  if not named:
    return
  widths = sorted({dataset.info[key] for key in ("num_classes", "vocab_size") if key in dataset.info})
  advice = ("pass eval_metrics={} (no evaluation metrics) or your own {name: (outputs, batch) -> "
            "per-example values}")
  what = f"eval_metrics {named} are classification metrics (the default when none are given)"
  for set_name, batch in dataset.eval_sets.items():
    if "labels" not in batch:
      raise ClassificationMetricsError(f"{what}, but eval set {set_name!r} of dataset "
                                       f"{dataset.name!r} has no labels (fields {sorted(batch)}); "
                                       f"{advice}")
    labels = np.asarray(batch["labels"])
    example = jax.tree_util.tree_map(lambda x: np.asarray(x)[:2], dict(batch))
    outputs, _ = jax.eval_shape(lambda p, x: model.forward(p, x), params, example["inputs"])
    shape = getattr(outputs, "shape", None)
    expected = tuple(example["labels"].shape)
    problem = None
    if shape is None:
      problem = f"outputs a {type(outputs).__name__}, not one array of logits"
    elif not np.issubdtype(labels.dtype, np.integer):
      problem = f"is scored against labels of dtype {labels.dtype}, not integer classes"
    elif tuple(shape[:-1]) != expected or len(shape) != len(expected) + 1:
      problem = (f"outputs shape {tuple(shape)} for {expected[0]} examples whose labels have shape "
                 f"{expected}; logits have shape {expected} + (classes,)")
    elif widths and shape[-1] not in widths:
      problem = (f"outputs {shape[-1]} values per example; the dataset's info gives "
                 f"{' or '.join(str(width) for width in widths)} classes (num_classes/vocab_size)")
    elif not widths and labels.size and shape[-1] <= labels.max():
      problem = (f"outputs {shape[-1]} values per example; the labels go up to {labels.max()}")
    if problem:
      raise ClassificationMetricsError(f"{what}, but model {model.name!r} {problem} "
                                       f"(eval set {set_name!r} of dataset {dataset.name!r}); "
                                       f"{advice}")


def _abstract_state(init_one: Callable[..., TrainState], runs: list[dict[str, Any]],
                    warm_start: Any, *, model: Model, objective: Objective,
                    refreshers: Sequence[Refresher], dataset: Dataset
                    ) -> tuple[TrainState, dict[str, Any]]:
  """(the run-stacked state's shapes, the run's fingerprint), from one run's traced initialisation
  (runs differ in values, not shapes); nothing is compiled."""
  first_run = jax.eval_shape(lambda: init_one(
      jax.random.PRNGKey(runs[0]["seed"]),
      hparams={name: value for name, value in runs[0].items() if name != "seed"},
      initial_params=None if warm_start is None else warm_start.for_run(0)))
  abstract = jax.tree_util.tree_map(
      lambda leaf: jax.ShapeDtypeStruct((len(runs),) + leaf.shape, leaf.dtype),
      first_run).replace(step=first_run.step)
  fingerprint = run_fingerprint(model=model, objective=objective, params=first_run.params,
                                opt_state=first_run.opt_state, refreshers=refreshers,
                                dataset=dataset,
                                warm_start=None if warm_start is None else warm_start.identity)
  return abstract, fingerprint


def finished_run(config: ml_collections.ConfigDict, workdir: str, *, model: Model,
                 objective: Objective, optimizer: optax.GradientTransformationExtraArgs,
                 dataset: Dataset, refreshers: Sequence[Refresher] = (),
                 hparam_grid: Sequence[Mapping[str, float]] | None = None,
                 initial_params: Any = None) -> bool:
  """Whether ``workdir`` holds this very run (the arguments `train` would get), finished.

  False for a workdir without a finished run (summary.json at ``config.steps``). For one that holds
  a run, the config and the fingerprint (objective, model, optimizer state, refreshers, dataset,
  warm start) must be this run's, as when resuming: ConfigError or `RunMismatchError` otherwise,
  so a study reading finished runs back never reads another run's results as this one's. Traces
  the initialisation; compiles nothing.
  """
  summary_path = os.path.join(workdir, "summary.json")
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(summary_path):
    return False
  with open(summary_path) as handle:
    finished_step = json.load(handle).get("step")
  if os.path.exists(config_path):
    with open(config_path) as handle:
      saved = json.load(handle)
    check_resumed_config(config, saved, hparam_grid)
    if FINGERPRINT_KEY in saved:
      runs = run_table(config, hparam_grid)
      warm_start = (None if initial_params is None else check_initial_params(
          initial_params, jax.eval_shape(model.init, jax.random.PRNGKey(0)), len(runs)))
      init_one = functools.partial(init_state, model=model, objective=objective,
                                   optimizer=optimizer, refreshers=refreshers)
      _, fingerprint = _abstract_state(init_one, runs, warm_start, model=model,
                                       objective=objective, refreshers=refreshers, dataset=dataset)
      check_fingerprint(fingerprint, saved[FINGERPRINT_KEY], workdir=workdir)
  return finished_step == config.steps


def train(config: ml_collections.ConfigDict, workdir: str, *, model: Model, objective: Objective,
          optimizer: optax.GradientTransformationExtraArgs, dataset: Dataset,
          refreshers: Sequence[Refresher] = (), optimizer_extra_args: ExtraArgsFn | None = None,
          eval_metrics: Mapping[str, MetricFn] = CLASSIFICATION_METRICS,
          eval_interventions: InterventionsFn | None = None,
          evaluators: Sequence[Evaluator | LastAndInterim] = (),
          hparam_grid: Sequence[Mapping[str, float]] | None = None,
          param_rules: Sequence[_sharding.ParamRule] = (),
          initial_params: Any = None, progress: bool = True) -> TrainResult:
  """Trains ``config.num_seeds`` runs of ``model`` under ``objective`` and ``optimizer`` together.

  With ``hparam_grid`` (a list of name -> value), every grid point is trained with every seed, all
  in one program: run r has grid point r // num_seeds and seed ``config.seed + r % num_seeds``, and
  finds its values (int32 for integers: a discrete choice such as an index; float32 otherwise) in
  ``state.hparams`` (``run.hparams`` for terms, interventions and the dataset's sampler).
  ``eval_metrics`` maps a name to ``(outputs, batch) -> per-example values`` (or (values,
  weights)); the default, `CLASSIFICATION_METRICS`, needs logits over the dataset's classes and is
  refused (`ClassificationMetricsError`) for a model without them: pass ``{}`` or your own.
  ``eval_interventions(run, batch)`` are the evaluation forward pass's interventions.
  ``evaluators`` are called at every evaluation with the run-stacked params and `RunView` (its
  step repeated per run, so every leaf has the run axis) and return extra metrics with a leading
  run axis (decodability probes, say); a `LastAndInterim` measures one thing at the last
  evaluation and another (or nothing) before it. Evaluations before the last step cover the eval
  sets named in ``config.interim_eval_sets`` (every set when empty); the last covers every set.

  ``initial_params`` warm-starts the runs: all or part of the model's parameter tree (nested dicts
  with the model's keys), as one set for every run, run-stacked, or a list with one set per run
  (see `check_initial_params`); `load_params` reads another run's checkpoint. Leaves not given are
  initialised as without it; the optimizer's state starts fresh (`optimizer.init` of the warm
  parameters), and so do stateful terms and refreshers. The arrays enter the state as arguments of
  the compiled programs that initialise the rest (`compile_init`), never as constants of a program.

  ``progress``: a line with the step, the loss, steps/s and the time left after every compiled
  call: to absl's log where absl logs at INFO (the binaries), else to stderr (a script, a
  notebook). False shows none.

  Reads the loop's fields of ``config`` (see `loop_config`); writes config.json, metrics.jsonl,
  tensorboard/, checkpoints/ and summary.json under ``workdir``. summary.json holds every metric
  as a list over runs (one entry per run, even for one run). Running it again with the same
  arguments resumes from the latest complete checkpoint and, on CPU, ends bitwise where an
  uninterrupted run ends. config.json records the config and a fingerprint of the objective (terms,
  their functions, sites and weights, the interventions), the model's parameters and sites, the
  optimizer state's tree, the refreshers, the dataset's arrays and the warm start: resuming with any
  of them changed is refused (see `run_fingerprint`).

  Raises:
    ConfigError: before compiling, for a field that cannot work (named with its value), such as an
      interim eval set the dataset lacks.
    RunMismatchError: before compiling, when ``workdir`` holds a different run (config,
      objective, model, optimizer, refreshers, dataset or warm start).
    UnknownSiteError: before compiling, for a term's site the model lacks.
    WarmStartError: before compiling, for initial parameters that do not fit the model.
    ClassificationMetricsError: before compiling, for classification metrics on a model whose
      outputs are not logits over the dataset's classes.
    BadInputError: before compiling, for duplicate or reserved term or refresher names, or
      ``eval_interventions`` that do not take ``(run, batch)``.
    NonFiniteLossError: at the first step whose loss, gradient, update or parameters are not
      finite, naming the step and the term(s).
    Preempted: after checkpointing, when SIGTERM arrived.
  """
  _sharding.initialize_distributed(config)
  check_hparam_grid(hparam_grid)
  runs = run_table(config, hparam_grid)
  num_runs = len(runs)
  shape = validate_loop_config(config, num_runs=num_runs)
  model.check_sites(objective.sites, what=f"{model.name}: objective terms")
  check_names(objective, refreshers)
  if eval_interventions is not None:
    check_interventions_fn(eval_interventions, what="eval_interventions")
  model_params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  warm_start = (None if initial_params is None else
                check_initial_params(initial_params, model_params, num_runs))
  check_classification_metrics(model, model_params, dataset, eval_metrics)
  interim_sets = interim_eval_sets(config, dataset)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)

  init_one = functools.partial(init_state, model=model, objective=objective, optimizer=optimizer,
                               refreshers=refreshers)
  compiled_init_one = compile_init(model=model, objective=objective, optimizer=optimizer,
                                   refreshers=refreshers,
                                   compiler_options=_sharding.compiler_options())

  def run_states(init: Callable[..., TrainState] = compiled_init_one) -> list[TrainState]:
    return [init(jax.random.PRNGKey(run["seed"]),
                 hparams={name: value for name, value in run.items() if name != "seed"},
                 initial_params=None if warm_start is None else warm_start.for_run(index))
            for index, run in enumerate(runs)]

  mesh = _sharding.make_mesh(shape)
  abstract, fingerprint = _abstract_state(init_one, runs, warm_start, model=model,
                                          objective=objective, refreshers=refreshers,
                                          dataset=dataset)
  shardings = _sharding.state_shardings(abstract, mesh, param_rules)
  checkpoints, start_step = _open_checkpoints(config, workdir, hparam_grid, fingerprint,
                                              is_main=is_main)
  runner = compile_chunk(model=model, objective=objective, optimizer=optimizer, dataset=dataset,
                         batch_size=config.batch_size, mesh=mesh, shardings=shardings,
                         refreshers=refreshers, optimizer_extra_args=optimizer_extra_args,
                         parallelism=config.parallelism)
  if start_step:
    try:
      state = _restore(checkpoints, start_step, abstract, shardings, workdir=workdir)
    except RunMismatchError:
      checkpoints.close()
      raise
    logging.info("resumed from step %d (%s)", start_step, workdir)
  else:
    state = jax.device_put(_stack_on_host(run_states()), shardings)
  state = runner.place(state)
  run_labels = [f"seed_{run['seed']}" if len(run) == 1 else
                "_".join(f"{name}_{value}" for name, value in run.items()) for run in runs]
  writer = MetricsWriter(workdir, num_runs=num_runs, run_labels=run_labels, resume_step=start_step,
                         tensorboard=config.tensorboard, enabled=is_main)
  replicated = _sharding.replicated(mesh)
  evaluate = _Evaluations(
      _evaluator(model=model, dataset=dataset, metric_fns=eval_metrics,
                 interventions=eval_interventions, eval_batch_size=config.eval_batch_size,
                 device_put=lambda tree: jax.device_put(tree, replicated)),
      evaluators, writer, last_step=config.steps, interim_sets=interim_sets)

  reporter = Progress(start_step, config.steps,
                      enabled=progress and (is_main or logging.level_info()))
  step = start_step
  last_train_metrics: dict[str, Any] = {}
  last_saved = start_step if start_step else None
  try:
    with _SigtermFlag() as sigterm:
      if step == 0 and config.eval_every:
        evaluate(0, runner.host_view(state))
      while step < config.steps:
        stop = _next_stop(step, config)
        state, metrics = runner.run(state, stop - step)
        metrics = _sharding.fetch(metrics)
        bad = _first_bad_step(metrics)
        _write_chunk_metrics(writer, metrics, chunk_start=step, num_steps=stop - step, bad=bad,
                             config=config)
        if bad is not None:
          checkpoints.wait()
          raise non_finite_error(metrics, bad, chunk_start=step,
                                 last_good=checkpoints.latest_step(), workdir=workdir)
        step = stop
        last_train_metrics = {name: per_run_json_value(values[-1])
                              for name, values in metrics.items() if values.ndim == 2}
        reporter.report(step, metrics["loss"][-1])
        if _due(step, config.eval_every, config.steps):
          evaluate(step, runner.host_view(state))
        if _due(step, config.checkpoint_every, config.steps) or sigterm.raised:
          checkpoints.save(step, runner.host_view(state))
          last_saved = step
        if sigterm.raised:
          checkpoints.wait()
          raise Preempted(f"SIGTERM at step {step}: checkpoint saved in {workdir}/checkpoints; "
                          "run the same command to resume")
    if last_saved != step:
      checkpoints.save(step, runner.host_view(state))
    checkpoints.wait()
    if step not in evaluate.by_step:
      # Resumed at the last step: its evaluation is logged, unless it was logged as an interim one
      # (a run resumed with fewer steps than it was started with), which covers only some sets.
      logged = {name for row in read_jsonl(writer.path) if row.get("step") == step for name in row}
      evaluate(step, runner.host_view(state),
               log=not all(any(name.startswith(f"eval/{set_name}/") for name in logged)
                           for set_name in dataset.eval_sets))
  finally:
    writer.close()

  final = runner.host_view(state)
  if not last_train_metrics:  # resumed after the last step: the final metrics are on disk
    logged = [row for row in read_jsonl(writer.path) if "loss" in row]
    last_train_metrics = {key: [value] if num_runs == 1 else value
                          for key, value in (logged[-1] if logged else {}).items()
                          if not key.startswith("eval/") and key != "step"}  # one run: a number
  summary = _summary(step, final, last_train_metrics, evaluate.by_step[step], runs)
  if is_main:
    write_json_atomically(os.path.join(workdir, "summary.json"), summary)
  checkpoints.close()
  return TrainResult(state=final, summary=summary, evaluations=evaluate.by_step)


def _summary(step: int, state: TrainState, train_metrics: Mapping[str, Any],
             eval_metrics: Mapping[str, np.ndarray], runs: list[dict[str, Any]]) -> dict[str, Any]:
  """summary.json: step, runs, digest, the last step's scalar training metrics, the final evaluation.

  Every metric is a list over runs (one entry per run, in `run_table`'s order), even for one run.
  """
  summary: dict[str, Any] = {"step": step, "seeds": [run["seed"] for run in runs],
                             "num_runs": len(runs), "runs": runs,
                             "digest": params_digest(_sharding.fetch(state.params))}
  summary.update(train_metrics)
  summary.update({name: per_run_json_value(value) for name, value in eval_metrics.items()})
  return summary
