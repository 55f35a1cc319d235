"""The arms, as data: what each trains with, in one program per arm (seeds times the arm's grid).

Every arm is an `Arm` in ``ARM_REGISTRY``; ``ARMS`` and ``FAMILIES`` are read from it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from landscape import data
from landscape import directions
from landscape import interventions
from landscape import objectives
from landscape import training
from landscape import transforms
from landscape.block_vs_reshape._tasks import Task
from landscape.training import ConfigError

BASIS = "concept_basis"
MEANS = "concept_means"
Grid = list[dict[str, float]]


@dataclasses.dataclass
class ArmPlan:
  """Everything `training.train` needs for one arm, and the arm's grid of hyper-parameters."""

  dataset: data.Dataset
  objective: objectives.Objective
  optimizer: optax.GradientTransformationExtraArgs
  grid: Grid
  refreshers: tuple[Any, ...] = ()
  optimizer_extra_args: Callable[[training.TrainState], Mapping[str, Any]] | None = None
  eval_interventions: objectives.InterventionsFn | None = None


@dataclasses.dataclass(frozen=True)
class Arm:
  """One arm of the experiment, as data.

  name: the arm's name (its directory and its row in the report). family: "baseline", "blocking"
  or "reshaping". build: (task, config) -> what it trains with (its dataset, objective, optimizer,
  refreshers, optimizer extra args and evaluation-time interventions; the plan's grid is ignored).
  grid: (task, config) -> its grid of hyper-parameters, every point trained with every seed in the
  arm's one program. group: arms of one group share compiled programs (the same programs over other
  data, or some of the same programs) and train one after another in one process, the later ones
  finding the programs compiled; "" is a group of its own.
  """

  name: str
  family: str
  build: Callable[[Task, ml_collections.ConfigDict], ArmPlan]
  grid: Callable[[Task, ml_collections.ConfigDict], Grid] = lambda task, config: [{}]
  group: str = ""

  def plan(self, task: Task, config: ml_collections.ConfigDict) -> ArmPlan:
    return dataclasses.replace(self.build(task, config), grid=self.grid(task, config))


def _gated_rows(run: objectives.RunView | training.TrainState, index: int, site: str) -> jax.Array:
  """The concept basis at ``site`` for runs whose grid point chose site ``index``, zeros otherwise.

  ``run`` is a run's view or its state (both have ``hparams`` and ``refreshed``). An all-zero basis
  makes an ablation or a projection the identity, so one program can hold runs that block at either
  site.
  """
  chosen = (run.hparams["site"] == index).astype(jnp.float32)
  return chosen * run.refreshed[f"{BASIS}/{site}"].vectors


def _block_refreshers(task: Task, config: ml_collections.ConfigDict, every: int) -> tuple[Any, ...]:
  return tuple(directions.refit_basis(
      f"{BASIS}/{site}", model=task.model, site=site, data=task.probe, num_classes=task.num_concepts,
      every=every, batch_size=config.probe_batch_size) for site in task.block_sites)


def _ablations(task: Task) -> objectives.InterventionsFn:
  def ablations(run, batch):
    del batch
    return {site: interventions.ablate(_gated_rows(run, index, site))
            for index, site in enumerate(task.block_sites)}

  return ablations


def _site_widths(task: Task) -> dict[str, int]:
  params = jax.eval_shape(task.model.init, jax.random.PRNGKey(0))
  example = task.dataset.example_batch(2)["inputs"]
  return task.model.site_widths(params, example)


def _adam(task: Task) -> optax.GradientTransformation:
  return optax.adam(task.learning_rate)


def _plain(task: Task, config: ml_collections.ConfigDict) -> ArmPlan:
  del config
  return ArmPlan(dataset=task.dataset, objective=objectives.compose(objectives.cross_entropy()),
                 optimizer=optax.chain(_adam(task)), grid=[{}])


def _oracle(task: Task, config: ml_collections.ConfigDict) -> ArmPlan:
  # With the probe fields plain's batches carry (its objective reads none of them, and they leave
  # the training batch as it was), so the oracle trains in plain's compiled program, other data.
  return dataclasses.replace(_plain(task, config),
                             dataset=data.with_probe_fields(task.oracle, task.probe))


def _grad_mask(task: Task, config: ml_collections.ConfigDict) -> ArmPlan:
  return dataclasses.replace(_plain(task, config), optimizer=optax.chain(
      transforms.mask_updates(task.shortcut_keep), _adam(task)))


def _refit_every(config: ml_collections.ConfigDict, refit: bool) -> int:
  """The blocking basis's refit period: every ``refit_every`` steps, or 0 (fitted once at init)."""
  return config.refit_every if refit else 0


def _ablate(task: Task, config: ml_collections.ConfigDict, *, refit: bool) -> ArmPlan:
  ablations = _ablations(task)
  return dataclasses.replace(
      _plain(task, config), refreshers=_block_refreshers(task, config, _refit_every(config, refit)),
      objective=objectives.compose(objectives.cross_entropy(), interventions=ablations),
      eval_interventions=ablations)


def _project(task: Task, config: ml_collections.ConfigDict, *, refit: bool) -> ArmPlan:
  widths = _site_widths(task)
  placeholder = {site: directions.make_basis(np.eye(task.num_concepts - 1, widths[site]), site=site)
                 for site in task.block_sites}
  held = transforms.site_directions(placeholder, task.model.site_links, extra_arg="bases")
  return dataclasses.replace(
      _plain(task, config), refreshers=_block_refreshers(task, config, _refit_every(config, refit)),
      # After the optimizer, so the parameter change itself has no component along the basis
      # (Adam's per-coordinate scaling would otherwise put some back).
      optimizer=optax.chain(_adam(task), transforms.project_out(held)),
      optimizer_extra_args=lambda state: {"bases": {
          site: _gated_rows(state, index, site) for index, site in enumerate(task.block_sites)}})


_WEIGHT = objectives.hyperparameter("weight")


def _with_term(task: Task, config: ml_collections.ConfigDict, term: objectives.Term,
               refreshers: tuple[Any, ...] = ()) -> ArmPlan:
  """Plain training plus one weighted term acting at the task's first blocking site."""
  return dataclasses.replace(_plain(task, config), refreshers=refreshers,
                             objective=objectives.compose(objectives.cross_entropy(), term))


def _explanation(task: Task, config: ml_collections.ConfigDict) -> ArmPlan:
  return _with_term(task, config, task.explanation(_WEIGHT))


def _adversary(task: Task, config: ml_collections.ConfigDict) -> ArmPlan:
  site = task.block_sites[0]
  return _with_term(task, config, objectives.adversarial_probe(
      site, width=_site_widths(task)[site], num_classes=task.num_concepts, weight=_WEIGHT,
      position=task.position))


def _steering(task: Task, config: ml_collections.ConfigDict) -> ArmPlan:
  site = task.block_sites[0]
  means = directions.refit_class_means(MEANS, model=task.model, site=site, data=task.probe,
                                       num_classes=task.num_concepts, every=config.refit_every,
                                       batch_size=config.probe_batch_size)
  return _with_term(task, config, objectives.preventative_steering(
      site, vector_key=MEANS, alpha=_WEIGHT, concept_key="concept"), refreshers=(means,))


def _concept_penalty(task: Task, config: ml_collections.ConfigDict) -> ArmPlan:
  site = task.block_sites[0]
  basis = directions.refit_basis(BASIS, model=task.model, site=site, data=task.probe,
                                 num_classes=task.num_concepts, every=config.refit_every,
                                 batch_size=config.probe_batch_size)
  return _with_term(task, config, objectives.concept_penalty(site, basis_key=BASIS, weight=_WEIGHT),
                    refreshers=(basis,))


def _site_grid(task: Task, config: ml_collections.ConfigDict) -> Grid:
  """Which of the task's blocking sites to block at, as an index into ``task.block_sites`` (an int32
  hyper-parameter: one program holds runs blocking at each site)."""
  del config
  return [{"site": index} for index in range(len(task.block_sites))]


def _weight_grid(arm: str) -> Callable[[Task, ml_collections.ConfigDict], Grid]:
  """The weights of ``config.grids[task][arm]``."""
  return lambda task, config: [{"weight": float(value)} for value in config.grids[task.name][arm]]


_REGISTRY = (
    # plain and oracle: one program over two datasets (on the image tasks; the marker task's oracle
    # generates its data otherwise); grad_mask: their evaluation programs.
    Arm("plain", "baseline", _plain, group="plain"),
    Arm("oracle", "baseline", _oracle, group="plain"),
    Arm("grad_mask", "blocking", _grad_mask, group="plain"),
    # fixed and refit: one initialisation and one evaluation, the chunks differing in the refit.
    Arm("ablate_fixed", "blocking", functools.partial(_ablate, refit=False), _site_grid, "ablate"),
    Arm("ablate_refit", "blocking", functools.partial(_ablate, refit=True), _site_grid, "ablate"),
    Arm("project_fixed", "blocking", functools.partial(_project, refit=False), _site_grid,
        "project"),
    Arm("project_refit", "blocking", functools.partial(_project, refit=True), _site_grid,
        "project"),
    Arm("explanation", "reshaping", _explanation, _weight_grid("explanation")),
    Arm("adversary", "reshaping", _adversary, _weight_grid("adversary")),
    Arm("steering", "reshaping", _steering, _weight_grid("steering")),
    Arm("concept_penalty", "reshaping", _concept_penalty, _weight_grid("concept_penalty")),
)
ARM_REGISTRY = {arm.name: arm for arm in _REGISTRY}
ARMS = tuple(ARM_REGISTRY)
FAMILIES = {arm.name: arm.family for arm in _REGISTRY}


def plan_arm(arm: str, task: Task, config: ml_collections.ConfigDict) -> ArmPlan:
  """The dataset, objective, optimizer, refreshers and grid of ``arm`` on ``task``."""
  if arm not in ARM_REGISTRY:
    raise ConfigError(f"config.arms: unknown arm {arm!r}; expected some of {ARMS}")
  return ARM_REGISTRY[arm].plan(task, config)


def _read_out(logits: jax.Array, batch: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
  """(the logits scored for each example (B, C), its label (B,)), at the scored position if any."""
  labels = batch["labels"]
  if logits.ndim == 3:
    mask = batch["label_mask"].astype(logits.dtype)
    return jnp.einsum("btc,bt->bc", logits, mask), jnp.sum(labels * mask.astype(labels.dtype), axis=1)
  return logits, labels


def shortcut_following(logits: jax.Array, batch: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
  """Per example: 1 when the prediction is the shortcut's class; weighted to the examples whose
  shortcut contradicts their label (the rate is over those alone)."""
  scored, labels = _read_out(logits, batch)
  predicted = jnp.argmax(scored, axis=-1)
  concept = batch["concept"]
  return (predicted == concept).astype(jnp.float32), (concept != labels).astype(jnp.float32)


EVAL_METRICS = dict(objectives.CLASSIFICATION_METRICS, shortcut=shortcut_following)


@dataclasses.dataclass(frozen=True)
class TaskDecodability:
  """The task's decodability measurements for one way of deploying the model: at every site (the
  last evaluation's, in the report's tables) and at the model's first site alone (the evaluations
  before it, for the figure over training: probing one site costs a fraction of probing all)."""

  every_site: Callable[..., directions.Decodability]
  first_site: Callable[..., directions.Decodability]


def make_task_decodability(task: Task, config: ml_collections.ConfigDict,
                           eval_interventions: objectives.InterventionsFn | None = None
                           ) -> TaskDecodability:
  """The task's decodability measurements, as deployed with ``eval_interventions``. Arms that
  deploy the model alike may share them: each program is compiled once, for one run, whatever the
  arm's number of runs."""
  measure = lambda sites: directions.make_decodability(
      task.model, task.dataset.eval_sets["val_ood"], field="concept", sites=sites,
      position=task.position, heldout_fraction=0.5, l2=config.decodability_l2,
      steps=config.decodability_steps, interventions=eval_interventions,
      compiler_options=training.compiler_options())
  return TaskDecodability(every_site=measure(task.model.site_names),
                          first_site=measure(task.model.site_names[:1]))


def decodability_evaluator(task: Task, plan: ArmPlan, config: ml_collections.ConfigDict,
                           measures: TaskDecodability | None = None) -> training.LastAndInterim:
  """The arm's decodability probes as the model is deployed (with the arm's evaluation-time
  interventions): at every site of the model at the last evaluation, at its first site before it.
  ``measures``: a `make_task_decodability` to reuse (made with the plan's evaluation-time
  interventions), or None to make one."""
  if measures is None:
    measures = make_task_decodability(task, config, plan.eval_interventions)

  def probing(measure):
    def evaluate(params, run):
      result = measure(params, run if plan.eval_interventions is not None else None)
      metrics = {}
      for index, site in enumerate(result.sites):
        metrics[f"decodability/{site}"] = result.heldout_accuracy[:, index]
        metrics[f"decodability_chance/{site}"] = np.full(result.heldout_accuracy.shape[0],
                                                         result.chance[index])
      return metrics
    return evaluate

  return training.LastAndInterim(last=probing(measures.every_site),
                                 interim=probing(measures.first_site))
