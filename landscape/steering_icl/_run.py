"""Running the experiment: train the seeds, measure the grid, write the report."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from landscape import data
from landscape import models
from landscape import objectives
from landscape import training
from landscape.steering_icl import _measure as measure
from landscape.steering_icl import _report as report
from landscape.steering_icl import _sae_vector as sae_vector
from landscape.steering_icl._criteria import CRITERIA
from landscape.steering_icl._prompts import Prompts
from landscape.steering_icl._prompts import make_prompts
from landscape.training import ConfigError

TRAIN_DIR = "train"


def validate(config: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
  """The sites and steering kinds; ConfigError naming the field for anything that cannot work."""
  training.check_optimizer_config(config.optimizer)
  training.check_positive(config, ["prompts.num_prompts", "prompts.num_groups", "prompts.shot_length",
                                   "prompts.query_length", "steering.num_documents", "seq_len"])
  if config.num_seeds < 2:
    raise ConfigError(f"config.num_seeds={config.num_seeds}: intervals over seeds need at least 2")
  if config.criteria not in CRITERIA:
    raise ConfigError(f"config.criteria={config.criteria!r}: expected one of {sorted(CRITERIA)}")
  kinds = [kind for kind in config.steering.kinds.split(",") if kind]
  unknown = sorted(set(kinds) - set(measure.KINDS))
  if unknown or not kinds:
    raise ConfigError(f"config.steering.kinds={config.steering.kinds!r}: unknown "
                      f"{unknown or 'empty'}; expected a comma-separated subset of {measure.KINDS}")
  site_kinds = ("resid_pre", "attn_out", "mlp_out", "resid_post")
  if config.steering.site_kind not in site_kinds:
    raise ConfigError(f"config.steering.site_kind={config.steering.site_kind!r}: expected one of "
                      f"{site_kinds}")
  magnitudes = list(config.steering.magnitudes)
  if len(set(magnitudes)) < 3 or 0.0 not in magnitudes or magnitudes != sorted(magnitudes):
    raise ConfigError(f"config.steering.magnitudes={tuple(magnitudes)}: give 3 or more increasing "
                      "magnitudes including 0")
  prompts = config.prompts
  shots = list(prompts.shots)
  if len(shots) < 3 or shots[0] != 0 or shots != sorted(set(shots)):
    raise ConfigError(f"config.prompts.shots={tuple(shots)}: give 3 or more increasing counts "
                      "starting at 0")
  if prompts.vector_shots not in shots or prompts.vector_shots == 0:
    raise ConfigError(f"config.prompts.vector_shots={prompts.vector_shots}: must be a non-zero "
                      f"entry of config.prompts.shots={tuple(shots)}")
  longest = max(shots) * prompts.shot_length + prompts.query_length
  if longest > config.seq_len:
    raise ConfigError(f"config.seq_len={config.seq_len}: the longest prompt has {longest} tokens "
                      f"({max(shots)} shots of {prompts.shot_length} and a query of "
                      f"{prompts.query_length}); the model's positions must cover it")
  if prompts.num_prompts % prompts.num_groups:
    raise ConfigError(f"config.prompts.num_groups={prompts.num_groups}: must divide "
                      f"config.prompts.num_prompts={prompts.num_prompts} (groups of equal size)")
  for field in ("target_concept", "shot_concept"):
    if not 0 <= prompts[field] < config.mixture.num_concepts:
      raise ConfigError(f"config.prompts.{field}={prompts[field]}: the mixture has "
                        f"config.mixture.num_concepts={config.mixture.num_concepts} concepts")
  if prompts.target_concept == prompts.shot_concept:
    raise ConfigError(f"config.prompts.shot_concept={prompts.shot_concept}: must differ from "
                      f"config.prompts.target_concept={prompts.target_concept}")
  if config.num_bootstrap < 2:
    raise ConfigError(f"config.num_bootstrap={config.num_bootstrap}: the criteria are judged on "
                      "bootstrap intervals; give at least 2 replicates (100 by default)")
  if measure.SAE in kinds:
    settings = sae_settings(config)
    rows = settings.num_documents * config.seq_len
    training_rows = rows - min(rows // 10, 20_000)  # array_source holds out the rest
    if rows < 10 or settings.batch_size > training_rows:
      raise ConfigError(f"config.sae.batch_size={settings.batch_size}: config.sae.num_documents="
                        f"{settings.num_documents} documents of {config.seq_len} tokens give "
                        f"{training_rows} training rows (and a tenth held out); need at least "
                        "one batch and 10 rows")
    if config.steering.num_documents < 2:
      raise ConfigError(f"config.steering.num_documents={config.steering.num_documents}: the SAE "
                        "feature is chosen on half the documents of each concept and judged on "
                        "the other half; need at least 2")
  sites = [f"blocks.{i}.{config.steering.site_kind}" for i in range(config.model.num_layers)]
  return sites, kinds


def sae_settings(config: ml_collections.ConfigDict) -> sae_vector.SAESettings:
  """The SAE kind's settings (config.sae); ConfigError naming the field that cannot work."""
  return sae_vector.sae_settings(config.sae.to_dict(), where="config.sae", error=ConfigError)


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """ConfigError naming every field that differs from the run already in ``workdir``.

  Before anything is built, by the training loop's own rule (`training.check_resumed_config`
  against the config.json it wrote, which holds the whole config): the loop's operational fields
  (steps, logging, checkpoints) may change, and a rerun resumes and remeasures; no other may.
  """
  path = os.path.join(workdir, TRAIN_DIR, "config.json")
  if os.path.exists(path):
    with open(path) as handle:
      training.check_resumed_config(config, json.load(handle))


def build(config: ml_collections.ConfigDict) -> tuple[data.HMMMixture, data.Dataset, models.Model]:
  mixture = data.ginc_mixture(**config.mixture.to_dict())
  dataset = data.ginc_dataset(mixture, config.seq_len, eval_size=config.eval_size)
  model = models.gpt(models.GPTConfig(
      vocab_size=mixture.vocab_size, max_len=config.seq_len, d_model=config.model.d_model,
      num_layers=config.model.num_layers, num_heads=config.model.num_heads))
  return mixture, dataset, model


def train_models(config: ml_collections.ConfigDict, workdir: str, dataset: data.Dataset,
                 model: models.Model) -> training.TrainResult:
  """Trains (or resumes, or reads back) every seed in one program."""
  optimizer = training.make_optimizer(config.optimizer, total_steps=config.steps)
  return training.train(config, os.path.join(workdir, TRAIN_DIR), model=model,
                        objective=objectives.compose(objectives.cross_entropy()),
                        optimizer=optimizer, dataset=dataset,
                        eval_metrics={"loss": objectives.per_example_cross_entropy})


def build_prompts(config: ml_collections.ConfigDict, mixture: data.HMMMixture) -> tuple[Prompts, Prompts]:
  """(the measured prompts, the prompts the shot vector is built from), on the host, before training."""
  settings = config.prompts
  prompt_args = dict(num_prompts=settings.num_prompts, num_groups=settings.num_groups,
                     shot_length=settings.shot_length, query_length=settings.query_length,
                     target_concept=settings.target_concept, shot_concept=settings.shot_concept)
  prompts = make_prompts(mixture, shots=tuple(settings.shots), seed=settings.seed, **prompt_args)
  vector_prompts = make_prompts(mixture, shots=(0, settings.vector_shots), seed=settings.seed + 1,
                                **prompt_args)
  return prompts, vector_prompts


def run(config: ml_collections.ConfigDict, workdir: str, *,
        command: str | None = None) -> dict[str, Any]:
  """Trains the seeds, measures the (m, N) grid at every site, and writes the report.

  Writes, under ``workdir``: train/ (the loop's config.json, metrics and checkpoints; a rerun with
  a different config is refused before anything is built), measured.npz (the grid), report.md with
  grid.png and boundary.png, summary.json (fits and criteria) and metrics.jsonl (the grid's cells).
  """
  sites, kinds = validate(config)
  check_workdir(config, workdir)
  start = time.perf_counter()
  mixture, dataset, model = build(config)
  prompts, vector_prompts = build_prompts(config, mixture)
  result = train_models(config, workdir, dataset, model)
  params = result.state.params
  logging.info("trained %d seeds: %.1f s", config.num_seeds, time.perf_counter() - start)

  settings = config.prompts
  site_vectors = measure.steering_vectors(
      model, params, mixture, sites=sites, kinds=kinds, target=settings.target_concept,
      other=settings.shot_concept, num_documents=config.steering.num_documents,
      document_length=config.seq_len, vector_prompts=vector_prompts,
      vector_shots=settings.vector_shots, seed=settings.seed + 2,
      sae_settings=sae_settings(config) if measure.SAE in kinds else None)
  heldout = dataset.eval_sets["heldout"]
  model_position_loss, bayes_position_loss = measure.position_losses(
      model, params, mixture, heldout["inputs"], heldout["labels"])
  log_odds, shot_vector_log_odds = {}, {}
  for site in sites:
    found = site_vectors[site]
    log_odds[site], shot_vector_log_odds[site] = measure.measure_grid(
        model, params, prompts, site=site,
        directions_KxSxD=np.stack([found.directions[kind] for kind in kinds]),
        scale_S=found.scale_S, magnitudes=config.steering.magnitudes,
        raw_shot_vector_SxD=found.shot_vector_SxD)
  measured = measure.Measured(
      sites=tuple(sites), kinds=tuple(kinds),
      magnitudes=np.asarray(config.steering.magnitudes, np.float64),
      shots=np.asarray(settings.shots, np.float64), log_odds=log_odds,
      shot_vector_log_odds=shot_vector_log_odds,
      cosine_shots_vs_means={site: found.cosine_S for site, found in site_vectors.items()},
      scale={site: found.scale_S for site, found in site_vectors.items()},
      bayes_log_odds_GxN=prompts.group_means(prompts.bayes_log_odds_NxP).T,
      bayes_behaviour_GxN=prompts.group_means(prompts.bayes_behaviour_NxP).T,
      vector_shots=settings.vector_shots,
      model_loss_S=np.asarray(result.summary["eval/heldout/loss"], np.float64),
      bayes_loss=dataset.info["bayes_optimal_loss"], model_position_loss_SxT=model_position_loss,
      bayes_position_loss_T=bayes_position_loss,
      sae={site: dict(found.sae.arrays(), cosine_vs_means_S=found.sae_cosine_S)
           for site, found in site_vectors.items() if found.sae is not None})
  if jax.process_index() == 0:
    measured.save(os.path.join(workdir, report.MEASURED_FILE))
  logging.info("measured the grid: %.1f s", time.perf_counter() - start)
  return report.write(config, workdir, seconds=time.perf_counter() - start, command=command)
