"""A training objective: named loss terms with scheduled weights, and the interventions in force.

A term is a plain function of `TermInputs` (model outputs, captured site activations, batch, params,
the term's own state, ...) returning a scalar, or a scalar and a dict of metrics. `Objective` runs the
model once with every term's sites captured and every training intervention applied, sums the
weighted terms, and reports each term's value and weight. Terms that carry trainable state (an
adversary's probe) declare ``init`` and ``optimizer``; the state gets the gradient of the term's own
value, unweighted, while the model gets the weighted one.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from landscape.sites import Intervention
from landscape.sites import BadInputError
from landscape.sites import before_interventions
from landscape.sites import check_intervention

TermFn = Callable[["TermInputs"], Any]


class RunView(NamedTuple):
  """A read-only view of one run's state: what interventions, loss terms and refreshers read.

  step: the training step, an int32 scalar shared by every run trained together.
  hparams: name -> this run's hyper-parameter: int32 where the grid gave an integer (a discrete
    choice), float32 otherwise (see `hyperparameter`).
  refreshed: refresher name -> its current value (a basis refitted during training, say).
  term_states: term name -> that term's own state (an adversary's probe), held fixed here.
  """

  step: jax.Array
  hparams: Mapping[str, jax.Array]
  refreshed: Mapping[str, Any]
  term_states: Mapping[str, Any]


# (run, batch) -> site -> intervention: the one signature of training interventions (an objective's
# and a term's) and of evaluation-time ones.
InterventionsFn = Callable[[RunView, Mapping[str, Any]], Mapping[str, Intervention]]


def check_interventions_fn(fn: Any, *, what: str) -> None:
  """Raises BadInputError unless ``fn`` is callable as ``(run, batch) -> {site: intervention}``.

  Checked with `inspect.signature`, before anything is traced; signatures it cannot read pass.
  """
  if not callable(fn):
    raise BadInputError(f"{what}: interventions is a {type(fn).__name__} ({fn!r}), not a function "
                        "(run, batch) -> {site: intervention}")
  try:
    signature = inspect.signature(fn)
  except (TypeError, ValueError):
    return
  try:
    signature.bind(None, None)
  except TypeError as error:
    name = getattr(fn, "__qualname__", type(fn).__name__)
    raise BadInputError(
        f"{what}: interventions {name} has signature {signature}; expected (run, batch) -> "
        f"{{site: intervention}}, with run a RunView and batch the batch ({error})") from None


def _call_interventions_fn(fn: InterventionsFn, run: RunView, batch: Mapping[str, Any], *,
                           what: str) -> Mapping[str, Intervention]:
  chosen = fn(run, batch)
  if not isinstance(chosen, Mapping):
    raise BadInputError(f"{what}: interventions returned a {type(chosen).__name__} ({chosen!r}); "
                        "expected a mapping {site: intervention}")
  # Checked here, where each is still on its own: chained with another at its site it would not be.
  for site, intervention in chosen.items():
    check_intervention(site, intervention)
  return chosen


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
  """A per-run value: ``scale * run.hparams[name]``.

  Runs trained together in one program (a grid of values times seeds, see `training.train`'s
  ``hparam_grid``) each find their own value there, so a weight or a steering magnitude given as
  ``hyperparameter("weight")`` differs between runs of one compiled program. The value is read as
  float32 (an int32 hyper-parameter, a discrete choice, is converted).
  """

  name: str
  scale: float = 1.0

  def value(self, hparams: Mapping[str, Any]) -> jax.Array:
    if self.name not in hparams:
      raise BadInputError(f"hyperparameter {self.name!r} is not among this run's hyper-parameters "
                          f"{sorted(hparams)}; pass it in training.train(hparam_grid=...)")
    return self.scale * hparams[self.name]


def hyperparameter(name: str, scale: float = 1.0) -> Hyperparameter:
  """A weight (or magnitude) read from each run's ``run.hparams[name]``, times ``scale``."""
  return Hyperparameter(name, scale)


Weight = float | Callable[[jax.Array], jax.Array] | Hyperparameter


def value_at(weight: Weight, step: jax.Array,
             hparams: Mapping[str, Any] | None = None) -> jax.Array:
  """A float, an optax schedule's value at ``step``, or a run's hyper-parameter, as float32."""
  if isinstance(weight, Hyperparameter):
    if hparams is None:
      raise BadInputError(f"hyperparameter {weight.name!r} needs the run's hyper-parameters")
    value = weight.value(hparams)
  else:
    value = weight(step) if callable(weight) else weight
  return jnp.asarray(value, jnp.float32)


class TermInputs(NamedTuple):
  """What a loss term sees at one training step.

  outputs: the model's outputs (logits) for ``batch["inputs"]``, with the training interventions.
  acts: site name -> captured activation, for the sites the term declared: after the site's
    interventions (what the rest of the model saw), or before them for the term's ``sites_before``.
  batch: the training batch.
  params: the model's parameters.
  state: the term's own state (None when it has none).
  run: the run's step, hyper-parameters, refreshed values (bases refitted during training) and
    term states (held fixed), read-only.
  step: the training step (int32 scalar), ``run.step``.
  rng: a key for this term at this step.
  forward: ``forward(params, inputs, *, interventions=None, capture=(), capture_before=()) ->
    (outputs, acts)`` reruns the model with the training interventions plus any given (input
    gradients, counterfactuals); see `Model.forward`.
  """

  outputs: Any
  acts: Mapping[str, jax.Array]
  batch: Mapping[str, jax.Array]
  params: Any
  state: Any
  run: RunView
  step: jax.Array
  rng: jax.Array
  forward: Callable[..., tuple[Any, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Term:
  """A named loss term.

  Attributes:
    name: unique within an objective; metrics appear as ``loss/{name}``, ``weight/{name}`` and
      ``{name}/{metric}``.
    fn: TermInputs -> scalar, or (scalar, metrics dict).
    weight: a float, an optax schedule of the step, or a `hyperparameter` (one value per run).
    sites: the sites whose activations ``fn`` reads from ``acts``. By default ``acts[site]`` is the
      activation after the site's interventions, the value the rest of the model saw.
    sites_before: those of ``sites`` that ``fn`` reads before the site's interventions (an unrouted
      penalty on a routed latent, say): ``acts[site]`` is then the activation as it reached the
      site. Gradients flow through what is read: a penalty read before a backward-only intervention
      is not routed by it.
    init: (key, params) -> the term's own state, or None.
    optimizer: trains that state on the gradient of ``fn``'s value (required with a
      differentiable state; None for state that only ``refresh`` changes).
    interventions: (run, batch) -> site -> intervention, applied in the training forward pass
      (``run.term_states[name]`` is the term's own state; ``batch`` lets an intervention differ
      per example).
  """

  name: str
  fn: TermFn
  weight: Weight = 1.0
  sites: tuple[str, ...] = ()
  init: Callable[[jax.Array, Any], Any] | None = None
  optimizer: optax.GradientTransformation | None = None
  interventions: InterventionsFn | None = None
  sites_before: tuple[str, ...] = ()

  def __post_init__(self):
    if isinstance(self.sites, str) or isinstance(self.sites_before, str):
      raise BadInputError(f"term {self.name!r}: sites={self.sites!r}, sites_before="
                          f"{self.sites_before!r}; expected sequences of site names")
    object.__setattr__(self, "sites", tuple(self.sites))
    object.__setattr__(self, "sites_before", tuple(self.sites_before))
    not_read = sorted(set(self.sites_before) - set(self.sites))
    if not_read:
      raise BadInputError(f"term {self.name!r}: sites_before {not_read} are not among its sites "
                          f"{list(self.sites)}")
    if self.interventions is not None:
      check_interventions_fn(self.interventions, what=f"term {self.name!r}")

  def weight_at(self, run: RunView) -> jax.Array:
    return value_at(self.weight, run.step, run.hparams)

  def capture_key(self, site: str) -> str:
    """The key of ``site``'s activation for this term in the forward pass's captures."""
    return before_interventions(site) if site in self.sites_before else site


def term(name: str, *, weight: Weight = 1.0, sites: Sequence[str] = (),
         sites_before: Sequence[str] = ()) -> Callable[[TermFn], Term]:
  """Decorator: ``@term("smooth", weight=0.1, sites=["hidden_0"])`` over a function of TermInputs.

  ``sites_before`` (a subset of ``sites``) are read before the sites' interventions.
  """

  def wrap(fn: TermFn) -> Term:
    return Term(name=name, fn=fn, weight=weight, sites=tuple(sites), sites_before=tuple(sites_before))

  return wrap


def _value_and_metrics(result: Any, name: str) -> tuple[jax.Array, dict[str, jax.Array]]:
  value, metrics = result if isinstance(result, tuple) else (result, {})
  value = jnp.asarray(value)
  if value.shape != ():
    raise BadInputError(f"loss term {name!r} returned shape {value.shape}; a term must return a scalar")
  return value.astype(jnp.float32), dict(metrics)


def chain_interventions(first: Intervention, second: Intervention) -> Intervention:
  return lambda act: second(first(act))


@dataclasses.dataclass(frozen=True)
class Objective:
  """Named terms summed with their weights, plus the interventions of the training forward pass.

  Attributes:
    terms: the loss terms; names must be unique.
    interventions: (run, batch) -> site -> intervention, beyond those the terms bring.
      Where several apply at one site they run in order: this objective's, then each term's.
  """

  terms: tuple[Term, ...]
  interventions: InterventionsFn | None = None

  def __post_init__(self):
    names = [t.name for t in self.terms]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
      raise BadInputError(f"objective: duplicate term names {duplicates}")
    for t in self.terms:
      if not isinstance(t, Term):
        raise BadInputError(f"objective: expected Term values, got {type(t).__name__}: {t!r}")
    if self.interventions is not None:
      check_interventions_fn(self.interventions, what="objective")

  @property
  def sites(self) -> tuple[str, ...]:
    """Every site a term reads, before or after its interventions."""
    return tuple(sorted({site for t in self.terms for site in t.sites}))

  @property
  def sites_after(self) -> tuple[str, ...]:
    """The sites some term reads after their interventions (the default)."""
    return tuple(sorted({site for t in self.terms for site in t.sites if site not in t.sites_before}))

  @property
  def sites_before(self) -> tuple[str, ...]:
    """The sites some term reads before their interventions."""
    return tuple(sorted({site for t in self.terms for site in t.sites_before}))

  @property
  def stateful_terms(self) -> tuple[Term, ...]:
    return tuple(t for t in self.terms if t.init is not None)

  def init(self, key: jax.Array, params: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(term name -> state, term name -> its optimizer's state) for the stateful terms."""
    states, optimizer_states = {}, {}
    for index, t in enumerate(self.stateful_terms):
      states[t.name] = t.init(jax.random.fold_in(key, index), params)
      if t.optimizer is not None:
        optimizer_states[t.name] = t.optimizer.init(states[t.name])
    return states, optimizer_states

  def training_interventions(self, run: RunView, batch: Mapping[str, Any]
                             ) -> dict[str, Intervention]:
    """The interventions of the training forward pass, merged site by site.

    Term states enter held fixed: a term's state is trained by its own value alone, never through
    an intervention it brings.
    """
    run = run._replace(term_states=jax.lax.stop_gradient(dict(run.term_states)))
    merged: dict[str, Intervention] = {}
    sources = ([_call_interventions_fn(self.interventions, run, batch, what="objective")]
               if self.interventions is not None else [])
    sources += [_call_interventions_fn(t.interventions, run, batch, what=f"term {t.name!r}")
                for t in self.terms if t.interventions is not None]
    for source in sources:
      for site, intervention in source.items():
        merged[site] = chain_interventions(merged[site], intervention) if site in merged else intervention
    return merged

  def loss(self, model, params: Any, term_states: Mapping[str, Any], *, batch: Mapping[str, Any],
           run: RunView, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted sum of the terms, and metrics; differentiable in ``params`` and ``term_states``.

    ``run`` gives the step, hyper-parameters and refreshed values; its ``term_states`` are replaced
    by ``term_states`` (held fixed). A stateful term is evaluated twice: with its state held fixed
    (its weighted value trains the model) and with the model held fixed (its unweighted value trains
    the state); the second adds zero to the total.
    """
    run = run._replace(term_states=jax.lax.stop_gradient(dict(term_states)))
    interventions = self.training_interventions(run, batch)

    def forward(forward_params, inputs, *, interventions=None, capture=(), capture_before=()):
      merged = dict(self.training_interventions(run, batch))
      for site, intervention in (interventions or {}).items():
        check_intervention(site, intervention)
        merged[site] = chain_interventions(merged[site], intervention) if site in merged else intervention
      return model.forward(forward_params, inputs, interventions=merged, capture=capture,
                           capture_before=capture_before)

    outputs, acts = model.forward(params, batch["inputs"], interventions=interventions,
                                  capture=self.sites_after, capture_before=self.sites_before)
    total = jnp.zeros((), jnp.float32)
    metrics: dict[str, jax.Array] = {}
    for index, t in enumerate(self.terms):
      term_acts = {site: acts[t.capture_key(site)] for site in t.sites}
      inputs = TermInputs(outputs=outputs, acts=term_acts, batch=batch,
                          params=params, state=term_states.get(t.name), run=run, step=run.step,
                          rng=jax.random.fold_in(rng, index), forward=forward)
      weight = t.weight_at(run)
      if t.init is not None:
        fixed_state = inputs._replace(state=jax.lax.stop_gradient(inputs.state))
        value, term_metrics = _value_and_metrics(t.fn(fixed_state), t.name)
        fixed_model = jax.lax.stop_gradient(inputs._replace(state=None, forward=None))._replace(
            state=inputs.state, forward=forward)
        state_value, _ = _value_and_metrics(t.fn(fixed_model), t.name)
        total = total + weight * value + (state_value - jax.lax.stop_gradient(state_value))
      else:
        value, term_metrics = _value_and_metrics(t.fn(inputs), t.name)
        total = total + weight * value
      metrics[f"loss/{t.name}"] = value
      metrics[f"weight/{t.name}"] = weight
      metrics.update({f"{t.name}/{key}": jnp.asarray(v) for key, v in term_metrics.items()})
    metrics["loss"] = total
    return total, metrics

  def update_states(self, term_states: Mapping[str, Any], term_opt_states: Mapping[str, Any],
                    state_grads: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Applies each stateful term's optimizer to its state's gradient: new (states, opt states)."""
    states = dict(term_states)
    optimizer_states = dict(term_opt_states)
    for t in self.stateful_terms:
      if t.optimizer is None:
        continue
      updates, optimizer_states[t.name] = t.optimizer.update(
          state_grads[t.name], optimizer_states[t.name], states[t.name])
      states[t.name] = optax.apply_updates(states[t.name], updates)
    return states, optimizer_states


def compose(*terms: Term, interventions=None) -> Objective:
  """An `Objective` over ``terms`` (and optional objective-level interventions)."""
  return Objective(terms=tuple(terms), interventions=interventions)
