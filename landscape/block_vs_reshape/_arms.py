"""The arms: what each trains with, in one program per arm (seeds times the arm's grid)."""

from __future__ import annotations

import dataclasses
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

FAMILIES = {
    "plain": "baseline", "oracle": "baseline",
    "grad_mask": "blocking", "ablate_fixed": "blocking", "ablate_refit": "blocking",
    "project_fixed": "blocking", "project_refit": "blocking",
    "explanation": "reshaping", "adversary": "reshaping", "steering": "reshaping",
    "concept_penalty": "reshaping",
}
ARMS = tuple(FAMILIES)
BASIS = "concept_basis"
MEANS = "concept_means"


@dataclasses.dataclass
class ArmPlan:
  """Everything `training.train` needs for one arm, and the arm's grid of hyper-parameters."""

  dataset: data.Dataset
  objective: objectives.Objective
  optimizer: optax.GradientTransformationExtraArgs
  grid: list[dict[str, float]]
  refreshers: tuple[Any, ...] = ()
  optimizer_extra_args: Callable[[training.TrainState], Mapping[str, Any]] | None = None
  eval_interventions: objectives.InterventionsFn | None = None


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


def plan_arm(arm: str, task: Task, config: ml_collections.ConfigDict) -> ArmPlan:
  """The dataset, objective, optimizer, refreshers and grid of ``arm`` on ``task``."""
  grids = config.grids
  task_loss = objectives.cross_entropy()
  base = optax.adam(task.learning_rate)
  plain = ArmPlan(dataset=task.dataset, objective=objectives.compose(task_loss),
                  optimizer=optax.chain(base), grid=[{}])
  site = task.block_sites[0]
  weight = objectives.hyperparameter("weight")
  reshaping_grid = lambda name: [{"weight": float(value)} for value in grids[task.name][name]]
  if arm == "plain":
    return plain
  if arm == "oracle":
    return dataclasses.replace(plain, dataset=task.oracle)
  if arm == "grad_mask":
    return dataclasses.replace(plain, optimizer=optax.chain(transforms.mask_updates(task.shortcut_keep),
                                                            base))
  site_grid = [{"site": 0.0}, {"site": 1.0}]
  if arm in ("ablate_fixed", "ablate_refit"):
    every = 0 if arm == "ablate_fixed" else config.refit_every
    ablations = _ablations(task)
    return dataclasses.replace(
        plain, grid=site_grid, refreshers=_block_refreshers(task, config, every),
        objective=objectives.compose(task_loss, interventions=ablations),
        eval_interventions=ablations)
  if arm in ("project_fixed", "project_refit"):
    every = 0 if arm == "project_fixed" else config.refit_every
    widths = _site_widths(task)
    placeholder = {s: directions.make_basis(np.eye(task.num_concepts - 1, widths[s]), site=s)
                   for s in task.block_sites}
    held = transforms.site_directions(placeholder, task.model.site_links, extra_arg="bases")
    return dataclasses.replace(
        plain, grid=site_grid, refreshers=_block_refreshers(task, config, every),
        # After the optimizer, so the parameter change itself has no component along the basis
        # (Adam's per-coordinate scaling would otherwise put some back).
        optimizer=optax.chain(base, transforms.project_out(held)),
        optimizer_extra_args=lambda state: {"bases": {
            s: _gated_rows(state, index, s) for index, s in enumerate(task.block_sites)}})
  if arm == "explanation":
    return dataclasses.replace(plain, grid=reshaping_grid("explanation"),
                               objective=objectives.compose(task_loss, task.explanation(weight)))
  if arm == "adversary":
    width = _site_widths(task)[site]
    adversary = objectives.adversarial_probe(site, width=width, num_classes=task.num_concepts,
                                             weight=weight, position=task.position)
    return dataclasses.replace(plain, grid=reshaping_grid("adversary"),
                               objective=objectives.compose(task_loss, adversary))
  if arm == "steering":
    means = directions.refit_class_means(MEANS, model=task.model, site=site, data=task.probe,
                                         num_classes=task.num_concepts, every=config.refit_every,
                                         batch_size=config.probe_batch_size)
    steering = objectives.preventative_steering(site, vector_key=MEANS, alpha=weight,
                                                concept_key="concept")
    return dataclasses.replace(plain, grid=reshaping_grid("steering"), refreshers=(means,),
                               objective=objectives.compose(task_loss, steering))
  if arm == "concept_penalty":
    refresher = directions.refit_basis(BASIS, model=task.model, site=site, data=task.probe,
                                       num_classes=task.num_concepts, every=config.refit_every,
                                       batch_size=config.probe_batch_size)
    penalty = objectives.concept_penalty(site, basis_key=BASIS, weight=weight)
    return dataclasses.replace(plain, grid=reshaping_grid("concept_penalty"), refreshers=(refresher,),
                               objective=objectives.compose(task_loss, penalty))
  raise ConfigError(f"config.arms: unknown arm {arm!r}; expected some of {ARMS}")


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


def decodability_evaluator(task: Task, plan: ArmPlan, config: ml_collections.ConfigDict):
  probed_interventions = None
  if plan.eval_interventions is not None:
    # The decodability probe hands its interventions one run's view and no batch; the arms'
    # evaluation-time interventions (ablations) read none.
    probed_interventions = lambda run: plan.eval_interventions(run, {})
  measure = directions.make_decodability(
      task.model, task.dataset.eval_sets["val_ood"], field="concept", sites=task.model.site_names,
      position=task.position, heldout_fraction=0.5, l2=config.decodability_l2,
      steps=config.decodability_steps, interventions=probed_interventions)

  def evaluate(params, run):
    result = measure(params, run if plan.eval_interventions is not None else None)
    metrics = {}
    for index, site in enumerate(result.sites):
      metrics[f"decodability/{site}"] = result.heldout_accuracy[:, index]
      metrics[f"decodability_chance/{site}"] = np.full(result.heldout_accuracy.shape[0],
                                                       result.chance[index])
    return metrics

  return evaluate
