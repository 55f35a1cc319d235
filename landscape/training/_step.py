"""The pure train and evaluation steps, built from a model, an objective and an optax chain.

``state, metrics = train_step(state, batch)`` for one run; the loop vmaps it over runs (seeds) and
compiles many steps into one call. Loss terms, interventions, refreshers and gradient transforms
arrive through their interfaces, so adding one never edits this file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from landscape.models import Model
from landscape.objectives import InterventionsFn
from landscape.objectives import Objective
from landscape.objectives import RunView
from landscape.objectives import check_interventions_fn
from landscape.training._state import Refresher
from landscape.training._state import TrainState
from landscape.training._state import check_names
from landscape.training._state import hparam_value
from landscape.training._warm_start import merge_params

MetricFn = Callable[[Any, Mapping[str, Any]], Any]
ExtraArgsFn = Callable[[TrainState], Mapping[str, Any]]


def init_state(key: jax.Array, *, model: Model, objective: Objective,
               optimizer: optax.GradientTransformationExtraArgs,
               refreshers: Sequence[Refresher] = (),
               hparams: Mapping[str, float] | None = None,
               initial_params: Any = None) -> TrainState:
  """The initial state of one run, all of it derived from ``key`` (but ``initial_params``).

  ``hparams`` (name -> number) are this run's hyper-parameters, kept in ``state.hparams`` as int32
  scalars where given as integers (discrete choices) and float32 scalars otherwise (`hparam_value`),
  where terms, interventions, datasets and extra-args functions read them: runs with different
  values then train together in one program.

  ``initial_params`` (a warm start: part of the parameter tree, nested dicts with the model's keys,
  shapes and dtypes) replaces those leaves of ``model.init``; the others keep their initialisation,
  the same as without it. The optimizer, the stateful terms and the refreshers start from the merged
  parameters (the optimizer's state fresh). Pass it as an argument of a jitted ``init_state``, not
  closed over, so the arrays are not folded into the program.
  """
  return _assemble_state(key, hparams, initial_params, split=_split_init_key,
                         init_params=model.init, init_terms=objective.init,
                         init_refreshers=_refresher_inits(refreshers),
                         init_optimizer=optimizer.init)


def _split_init_key(key: jax.Array) -> tuple[jax.Array, ...]:
  """(init_key, rng, data_key, terms_key, refresh_key): every part of the state's randomness."""
  return tuple(jax.random.split(key, 5))


def _refresher_inits(refreshers: Sequence[Refresher]) -> list[tuple[str, Callable[..., Any]]]:
  """(name, (refresh_key, params) -> its initial value) per refresher, its key folded by place."""
  return [(refresher.name, lambda key, params, refresher=refresher, index=index:
           refresher.init(jax.random.fold_in(key, index), params))
          for index, refresher in enumerate(refreshers)]


def _assemble_state(key: jax.Array, hparams: Mapping[str, float] | None, initial_params: Any, *,
                    split, init_params, init_terms, init_refreshers, init_optimizer) -> TrainState:
  """The state `init_state` describes, from its parts' initialisers (traced in one program by
  `init_state`, each compiled on its own by `compile_init`)."""
  init_key, rng, data_key, terms_key, refresh_key = split(key)
  params = merge_params(init_params(init_key), initial_params)
  term_states, term_opt_states = init_terms(terms_key, params)
  refreshed = {name: init(refresh_key, params) for name, init in init_refreshers}
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=init_optimizer(params), rng=rng,
      data_key=data_key,
      hparams={name: hparam_value(name, value) for name, value in (hparams or {}).items()},
      term_states=term_states, term_opt_states=term_opt_states, refreshed=refreshed)


def compile_init(*, model: Model, objective: Objective,
                 optimizer: optax.GradientTransformationExtraArgs,
                 refreshers: Sequence[Refresher] = (),
                 compiler_options: Mapping[str, Any] | None = None) -> Callable[..., TrainState]:
  """`init_state` with these arguments bound, compiled in parts: the key's split, the model's
  initialisation, the terms', each refresher's and the optimizer's, each its own program.

  It takes ``(key, *, hparams=None, initial_params=None)`` and computes what `init_state` computes,
  the same operations on the same values: the parameters, keys and hyper-parameters bitwise, values
  computed in float32 arithmetic (a refresher's fit) to float32 rounding, since XLA may group the
  operations of separate programs differently. One program for the whole state would be compiled anew
  for every objective, optimizer and set of refreshers; in parts, runs that share a model or a
  refresher (an experiment's arms on one task) share its program, which JAX's compilation cache
  finds by its text.
  """
  jit = lambda fn: jax.jit(fn, compiler_options=compiler_options)
  parts = dict(split=jit(_split_init_key), init_params=jit(model.init),
               init_terms=jit(objective.init), init_optimizer=jit(optimizer.init),
               init_refreshers=[(name, jit(init)) for name, init in _refresher_inits(refreshers)])

  def init(key: jax.Array, *, hparams: Mapping[str, float] | None = None,
           initial_params: Any = None) -> TrainState:
    return _assemble_state(key, hparams, initial_params, **parts)

  return init


def run_view(state: TrainState, refreshed: Mapping[str, Any] | None = None) -> RunView:
  """What interventions, terms, refreshers and evaluators read of a run (or of stacked runs)."""
  return RunView(step=state.step, hparams=state.hparams,
                 refreshed=dict(state.refreshed if refreshed is None else refreshed),
                 term_states=state.term_states)


def transform_metrics(opt_state: Any) -> dict[str, jax.Array]:
  """Metrics reported by gradient transforms: every ``metrics`` field in the optimizer state."""
  found = optax.tree_utils.tree_get_all_with_path(opt_state, "metrics")
  metrics: dict[str, jax.Array] = {}
  for index, (_, reported) in enumerate(found):
    prefix = "transform" if len(found) == 1 else f"transform{index}"
    metrics.update({f"{prefix}/{key}": value for key, value in reported.items()})
  return metrics


def make_train_step(*, model: Model, objective: Objective,
                    optimizer: optax.GradientTransformationExtraArgs,
                    refreshers: Sequence[Refresher] = (),
                    optimizer_extra_args: ExtraArgsFn | None = None,
                    axis_name: str | None = None) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
  """Builds ``train_step(state, batch) -> (state, metrics)`` for one run.

  Order within a step: each refresher renews ``state.refreshed[name]`` from the current parameters
  (seeing the values renewed before it in ``run.refreshed``); the objective's loss and its gradients
  in the parameters and the term states; (under pmap, the gradients averaged over ``axis_name``);
  the optimizer chain, given ``optimizer_extra_args(state)`` (the state with the renewed values) as
  keyword extra args; the terms' own optimizers.

  The loop vmaps it over runs with ``STATE_AXES``: ``state.step`` stays one unbatched scalar.

  Metrics: ``loss`` (the weighted total), ``loss/{term}``, ``weight/{term}``, per-term metrics,
  ``grad_norm``, ``update_norm``, ``param_norm`` and whatever the transforms report.

  Raises:
    BadInputError: for duplicate or reserved term or refresher names (see `check_names`).
  """
  check_names(objective, refreshers)

  def train_step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
    rng, loss_key, refresh_key = jax.random.split(state.rng, 3)
    refreshed = dict(state.refreshed)
    for index, refresher in enumerate(refreshers):
      refreshed[refresher.name] = refresher.update(
          refreshed[refresher.name], params=state.params, step=state.step,
          key=jax.random.fold_in(refresh_key, index), run=run_view(state, refreshed))
    run = run_view(state, refreshed)

    def loss_fn(params, term_states):
      return objective.loss(model, params, term_states, batch=batch, run=run, rng=loss_key)

    (_, metrics), (grads, state_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        state.params, state.term_states)
    if axis_name is not None:
      grads, state_grads, metrics = jax.lax.pmean((grads, state_grads, metrics), axis_name)
    refreshed_state = state.replace(refreshed=refreshed)
    extra_args = (dict(optimizer_extra_args(refreshed_state)) if optimizer_extra_args is not None
                  else {})
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params, **extra_args)
    params = optax.apply_updates(state.params, updates)
    term_states, term_opt_states = objective.update_states(state.term_states,
                                                           state.term_opt_states, state_grads)
    metrics.update(grad_norm=optax.tree.norm(grads), update_norm=optax.tree.norm(updates),
                   param_norm=optax.tree.norm(params))
    metrics.update(transform_metrics(opt_state))
    new_state = refreshed_state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                        rng=rng, term_states=term_states,
                                        term_opt_states=term_opt_states)
    return new_state, metrics

  return train_step


def make_eval_step(*, model: Model, metric_fns: Mapping[str, MetricFn],
                   interventions: InterventionsFn | None = None
                   ) -> Callable[[Any, RunView, Any, jax.Array], dict[str, tuple]]:
  """Builds ``eval_step(params, run, batch, valid_B) -> {metric: (weighted sum, weight sum)}``.

  Each metric function maps (outputs, batch) to per-example values (B,) or (values, weights); the
  sums let the loop average exactly over a set split into padded chunks (``valid_B`` is 0 on padding).
  ``interventions(run, batch)`` gives the evaluation forward pass's interventions, with the one
  signature of training interventions (none by default: a training-only intervention such as
  preventative steering is off at evaluation).

  Raises:
    BadInputError: when ``interventions`` is not callable as ``(run, batch)`` (before tracing).
  """

  if interventions is not None:
    check_interventions_fn(interventions, what="eval_interventions")

  def eval_step(params, run, batch, valid_B):
    chosen = dict(interventions(run, batch)) if interventions is not None else {}
    outputs, _ = model.forward(params, batch["inputs"], interventions=chosen)
    sums = {}
    for name, fn in metric_fns.items():
      result = fn(outputs, batch)
      values, weights = result if isinstance(result, tuple) else (result, jnp.ones_like(result))
      weights = weights * valid_B
      sums[name] = (jnp.sum(values * weights), jnp.sum(weights))
    return sums

  return eval_step
