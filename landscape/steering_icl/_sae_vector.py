"""A steering vector from an SAE feature: a small TopK SAE at a site, the feature whose activation
best tells documents of two concepts apart, and its decoder row.

The SAE (`landscape.sae`: `Recipe`, `init_train_state`, `make_train_chunk`, `trained_saes`, over
`landscape.sae_sources.array_source`) is trained per seed and site on the site's activations over
documents of every concept of the mixture (every position a row), inputs normalised to unit mean
squared norm and folded back, so it is the site's SAE, not one fitted to the two concepts.

The rule, fixed before the default preset was run with it: a feature's score is the AUROC of its
mean code over a document's positions at telling documents of the target concept c (positives)
from documents of c' (negatives); the feature chosen has the largest |AUROC - 0.5| on the first
half of the documents of each concept (lowest index on a tie), and its direction is its unit
decoder row, negated when it fires more on c' (so it points towards c, as the other vectors do).
It separates the concepts when its oriented AUROC on the other half (documents it was not chosen
on) is at least `SEPARATION_THRESHOLD`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import scipy.stats

from landscape import sae as sae_lib
from landscape import sae_sources
from landscape.sites import BadInputError
from landscape.steering_icl import _vectors as vectors

SEPARATION_THRESHOLD = 0.8


@dataclasses.dataclass(frozen=True)
class SAESettings:
  """A TopK SAE of ``d_sae`` latents and ``k`` per row, ``steps`` Adam steps of ``batch_size`` rows
  at ``learning_rate`` (linear warm-up over ``warmup_steps``), on ``num_documents`` documents.
  Build it with `sae_settings`, which checks every field."""

  d_sae: int
  k: int
  steps: int
  batch_size: int
  learning_rate: float
  warmup_steps: int
  num_documents: int


def sae_settings(values: Mapping[str, Any], *, where: str = "sae_settings",
                 error: type[BadInputError] = BadInputError) -> SAESettings:
  """`SAESettings` from ``values``; ``error`` naming ``{where}.{field}`` and its value otherwise."""
  fields = [field.name for field in dataclasses.fields(SAESettings)]
  if sorted(values) != sorted(fields):
    raise error(f"{where}={dict(values)}: expected the fields {fields}")
  for name in ("d_sae", "k", "steps", "batch_size", "num_documents"):
    value = values[name]
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
      raise error(f"{where}.{name}={value!r}: must be an int >= 1")
  if values["k"] > values["d_sae"]:
    raise error(f"{where}.k={values['k']}: must not exceed {where}.d_sae={values['d_sae']}")
  if not values["learning_rate"] > 0:
    raise error(f"{where}.learning_rate={values['learning_rate']!r}: must be > 0")
  if not isinstance(values["warmup_steps"], (int, np.integer)) or values["warmup_steps"] < 0:
    raise error(f"{where}.warmup_steps={values['warmup_steps']!r}: must be an int >= 0")
  return SAESettings(**values)


@dataclasses.dataclass(frozen=True)
class SAEFeature:
  """The SAE feature chosen at one site, per seed (each seed its own SAE).

  direction_SxD: unit decoder rows oriented towards c.
  feature_S: the chosen latent. auroc_chosen_S, auroc_heldout_S: its oriented AUROC (>= 0.5 on the
    half it was chosen on) on each half of the documents.
  fve_S, l0_S, dead_fraction_S: the SAE on its held-out rows (`landscape.sae.EvalStats`).
  """

  direction_SxD: np.ndarray
  feature_S: np.ndarray
  auroc_chosen_S: np.ndarray
  auroc_heldout_S: np.ndarray
  fve_S: np.ndarray
  l0_S: np.ndarray
  dead_fraction_S: np.ndarray

  @property
  def separates_S(self) -> np.ndarray:
    return self.auroc_heldout_S >= SEPARATION_THRESHOLD

  def arrays(self) -> dict[str, np.ndarray]:
    return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def auroc(positives_NxF, negatives_MxF) -> np.ndarray:
  """(F,) per column, P(positive > negative) + P(equal) / 2: the Mann-Whitney U over N x M."""
  positives = np.asarray(positives_NxF, np.float64)
  negatives = np.asarray(negatives_MxF, np.float64)
  if positives.ndim != 2 or negatives.ndim != 2 or positives.shape[1] != negatives.shape[1] or (
      not positives.shape[0] or not negatives.shape[0]):
    raise BadInputError(f"auroc: positives {positives.shape} and negatives {negatives.shape} must "
                        "be (N, F) and (M, F), N, M >= 1")
  ranks = scipy.stats.rankdata(np.concatenate([positives, negatives]), axis=0)
  count, other = positives.shape[0], negatives.shape[0]
  return (ranks[:count].sum(0) - count * (count + 1) / 2) / (count * other)


def choose_feature(codes_target_DxF, codes_other_DxF) -> tuple[int, float, float, float]:
  """(feature, sign, oriented AUROC on the first half, oriented AUROC on the second half) by the
  module's rule, from each document's mean code (D documents of each concept, D >= 2)."""
  target = np.asarray(codes_target_DxF, np.float64)
  other = np.asarray(codes_other_DxF, np.float64)
  if min(target.shape[0], other.shape[0]) < 2:
    raise BadInputError(f"choose_feature: {target.shape[0]} and {other.shape[0]} documents; need "
                        "at least 2 of each concept (half to choose, half to judge)")
  half_target, half_other = target.shape[0] // 2, other.shape[0] // 2
  chosen_on = auroc(target[:half_target], other[:half_other])
  feature = int(np.argmax(np.abs(chosen_on - 0.5)))
  sign = 1.0 if chosen_on[feature] >= 0.5 else -1.0
  heldout = auroc(target[half_target:, feature:feature + 1], other[half_other:, feature:feature + 1])[0]
  orient = lambda value: float(value if sign > 0 else 1.0 - value)
  return feature, sign, orient(chosen_on[feature]), orient(heldout)


def train_site_saes(rows_SxNxD: np.ndarray, settings: SAESettings, *, seed: int
                    ) -> tuple[list[sae_lib.SAE], list[sae_lib.EvalStats]]:
  """One TopK SAE per seed's rows (S, N, D), each on raw activations; a tenth of the rows held out
  for its `EvalStats`. Every SAE starts from the initialisation of ``seed``; seed s's stream of
  batches is keyed by ``seed + s``."""
  rows_SxNxD = np.asarray(rows_SxNxD, np.float32)
  group = sae_lib.SAEGroup("site", sae_lib.Recipe(
      "topk", d_sae=settings.d_sae, k=settings.k, warmup_steps=settings.warmup_steps,
      b_dec_init="mean", dead_after_tokens=50 * settings.batch_size),
      members=(sae_lib.Member(seed=seed, learning_rate=settings.learning_rate),))
  chunk = evaluate = None
  saes, stats = [], []
  for index, rows in enumerate(rows_SxNxD):
    source = sae_sources.array_source(rows, batch_size=settings.batch_size, name=f"seed {index}")
    if chunk is None:
      # Compiled once: every seed's source has the same row count, so the same batch schedule,
      # and its rows arrive as the chunk's argument.
      chunk = sae_lib.make_train_chunk([group], source, total_steps=settings.steps)
      evaluate = sae_lib.make_evaluate([group])
    state = sae_lib.init_train_state(jax.random.PRNGKey(seed + index), [group], source,
                                     total_steps=settings.steps, normalize_inputs=True)
    state, _ = chunk(state, source.arrays, settings.steps)
    stats.append(jax.tree_util.tree_map(lambda leaf: np.asarray(leaf)[0],
                                        evaluate(state, source.eval_acts)["site"]))
    saes.append(next(iter(sae_lib.trained_saes([group], state).values())))
  return saes, stats


def sae_feature(saes: list[sae_lib.SAE], stats: list[sae_lib.EvalStats], acts_target_SxPxTxD,
                acts_other_SxPxTxD) -> SAEFeature:
  """Each seed's chosen feature from its SAE's codes on P documents (S, P, T, D) of c and of c'."""
  encode = jax.jit(lambda sae, rows: sae.encode(rows))
  chosen = []
  for sae, target, other in zip(saes, acts_target_SxPxTxD, acts_other_SxPxTxD):
    mean_codes = [np.asarray(encode(sae, np.asarray(acts, np.float32).reshape(-1, acts.shape[-1])),
                             np.float64).reshape(acts.shape[:2] + (-1,)).mean(1)
                  for acts in (target, other)]
    feature, sign, on_chosen, heldout = choose_feature(*mean_codes)
    direction = sign * vectors.unit(np.asarray(sae.W_dec[feature], np.float64))
    chosen.append((direction, feature, on_chosen, heldout))
  return SAEFeature(
      direction_SxD=np.stack([c[0] for c in chosen]),
      feature_S=np.asarray([c[1] for c in chosen]),
      auroc_chosen_S=np.asarray([c[2] for c in chosen]),
      auroc_heldout_S=np.asarray([c[3] for c in chosen]),
      fve_S=np.asarray([float(s.fve) for s in stats]),
      l0_S=np.asarray([float(s.l0) for s in stats]),
      dead_fraction_S=np.asarray([float(s.dead_fraction) for s in stats]))
