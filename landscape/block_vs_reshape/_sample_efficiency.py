"""Toy Colors sample efficiency: label-only examples against explanation-annotated ones.

Ross et al. (2017) report that explanation annotations tied to rule 1 let a model reach 0.80 / 0.90
/ 0.99 accuracy with about 71x / 29x / 6x fewer examples than label-only training. Their code
(dtak/rrr, bin/check_color_data_requirements.py) trains two annotated conditions: "pro rule 1",
every pixel but the corners marked irrelevant (rule 1 is the reason), and "anti rule 1", the corners
marked irrelevant (rule 1 is forbidden); accuracy is on test data where both rules hold. Both are
run here, beside label-only training.

Every training-set size of ``config.sample_efficiency.sizes`` is trained with every seed in one
program per condition (the size is a per-run hyper-parameter: each run draws its batches from its
first n examples), and the examples needed to reach each threshold are read off the mean accuracy
curve, interpolated linearly in log n between measured sizes. Their lambda = 1000 acts on inputs in
0-255; ours are in [0, 1], so the same penalty is lambda = 1000 / 255^2 here (the config's default).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections
import numpy as np
import optax

from landscape import analysis
from landscape import data
from landscape import models
from landscape import objectives
from landscape import training
from landscape.block_vs_reshape._schedule import loop_config

CONDITIONS = ("label_only", "pro_rule1", "anti_rule1")
PUBLISHED_RATIOS = {0.8: 71.0, 0.9: 29.0, 0.99: 6.0}


def examples_needed(sizes: np.ndarray, accuracy: np.ndarray, threshold: float) -> float | None:
  """The smallest n where the curve reaches ``threshold`` (log-linear between sizes), or None."""
  above = np.nonzero(accuracy >= threshold)[0]
  if not len(above):
    return None
  first = int(above[0])
  if first == 0:
    return float(sizes[0])
  low, high = accuracy[first - 1], accuracy[first]
  fraction = (threshold - low) / (high - low)
  return float(np.exp(np.log(sizes[first - 1]) + fraction * (np.log(sizes[first]) -
                                                              np.log(sizes[first - 1]))))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains both conditions over every size and seed; returns the curves and the ratios."""
  settings = config.sample_efficiency
  sizes = np.asarray(sorted(settings.sizes), np.float64)
  full = data.toy_colors(num_train=int(sizes[-1]), num_eval=config.toy_colors.num_eval)
  rule1_pixels = full.arrays["mask"]
  dataset = data.subset_sampler(dataclasses.replace(
      full, arrays=dict(full.arrays, anti_rule1=rule1_pixels, pro_rule1=1.0 - rule1_pixels)))
  model = models.mlp(75, tuple(config.toy_colors.hidden_sizes), 2)
  grid = [{"train_size": float(size)} for size in sizes]
  curves: dict[str, dict[str, Any]] = {}
  for condition in CONDITIONS:
    # Only what changes the training: thresholds are read off afterwards, and of the Toy Colors
    # settings the study uses the model, learning rate and evaluation sets.
    loop = loop_config(config, settings.steps, config.batch_size, dict(
        condition=condition, sizes=sizes.tolist(),
        explanation_weight=settings.explanation_weight,
        toy_colors={name: config.toy_colors[name] for name in ("hidden_sizes", "learning_rate",
                                                                "num_eval")}))
    terms = [objectives.cross_entropy()]
    if condition != "label_only":
      terms.append(objectives.explanation_penalty(weight=settings.explanation_weight,
                                                  mask_key=condition))
    result = training.train(loop, os.path.join(workdir, condition), model=model,
                            objective=objectives.compose(*terms),
                            optimizer=optax.adam(config.toy_colors.learning_rate), dataset=dataset,
                            hparam_grid=grid)
    runs = result.summary["runs"]
    curves[condition] = {}
    for split in ("id", "ood"):
      values = np.asarray(result.summary[f"eval/{split}/accuracy"], np.float64)
      per_size = [values[[index for index, run in enumerate(runs)
                          if run["train_size"] == size]] for size in sizes]
      curves[condition][split] = [analysis.mean_interval(row) for row in per_size]
  needed = {}
  for split in ("id", "ood"):
    needed[split] = {}
    for threshold in settings.thresholds:
      counts = {condition: examples_needed(sizes, np.asarray([e.mean for e in curves[condition][split]]),
                                           threshold) for condition in CONDITIONS}
      ratios = {f"ratio_{condition}": (counts["label_only"] / counts[condition]
                                       if counts["label_only"] and counts[condition] else None)
                for condition in CONDITIONS[1:]}
      needed[split][threshold] = dict(counts, **ratios, published_ratio=PUBLISHED_RATIOS.get(threshold))
  return dict(sizes=sizes.tolist(), curves=curves, needed=needed, steps=settings.steps,
              explanation_weight=settings.explanation_weight, num_seeds=config.num_seeds)
