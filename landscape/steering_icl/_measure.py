"""Measuring a trained model's behaviour over a grid of steering magnitudes and shot counts.

Steering adds ``m * scale * direction`` to a site's activation at the read-out position (the last
token of the prompt, where the behaviour is read), ``scale`` the site's mean activation norm over
documents and ``direction`` a unit vector oriented towards the target concept c: the difference of
means (documents of c minus documents of c'), the negated vector built from c' shots, a random
direction, or the decoder row of the SAE feature that best separates documents of c from c'
(`_sae_vector`). Adding it is `landscape.interventions.steer(shift, 1.0, positions=-1)`. Every
seed is measured in one vmapped program per site and shot count.

A measurement unit (the bootstrap's) is one seed's group of prompts; grids are (units, M, N).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from landscape import data
from landscape import directions
from landscape import interventions
from landscape.models import Model
from landscape.sites import BadInputError
from landscape.steering_icl import _sae_vector as sae_vector
from landscape.steering_icl import _vectors as vectors
from landscape.steering_icl._prompts import Prompts

DIFF_OF_MEANS, SHOTS, RANDOM, SAE = "diff_of_means", "shots", "random", "sae"
KINDS = (DIFF_OF_MEANS, SHOTS, RANDOM, SAE)
KIND_TITLES = {DIFF_OF_MEANS: "difference of means", SHOTS: "built from shots",
               RANDOM: "random (control)", SAE: "SAE feature"}


def readout_log_probs(model: Model, site: str):
  """A jitted (params_S, tokens (P, T), shifts (S, M, D)) -> (S, M, P, V) log-probabilities of the
  next token after each prompt, steered by each shift at ``site``'s last position."""

  def one_seed(params, tokens_PxT, shifts_MxD):
    def one_shift(shift_D):
      logits, _ = model.forward(params, tokens_PxT, interventions={
          site: interventions.steer(shift_D, 1.0, positions=-1)})
      return jax.nn.log_softmax(logits[:, -1].astype(jnp.float32), axis=-1)
    return jax.vmap(one_shift)(shifts_MxD)

  return jax.jit(jax.vmap(one_seed, in_axes=(0, None, 0)))


def capture_sites(model: Model, sites: Sequence[str]):
  """A jitted (params_S, tokens (P, T)) -> site -> (S, P, T, D) activations."""

  def one_seed(params, tokens_PxT):
    _, captured = model.forward(params, tokens_PxT, capture=tuple(sites))
    return captured

  return jax.jit(jax.vmap(one_seed, in_axes=(0, None)))


@dataclasses.dataclass(frozen=True)
class Measured:
  """What the model did on the grid, per site; everything the report reads.

  Attributes:
    sites, kinds, magnitudes, shots: the grid's axes (magnitudes in units of the site's scale).
    log_odds: site -> (K, U, M, N): the behaviour per kind, unit, magnitude and shot count.
    shot_vector_log_odds: site -> (U,): the raw vector built from ``vector_shots`` shots, added at
      the read-out position of the prompts without shots.
    cosine_shots_vs_means: site -> (S,): cosine of the shot vector (towards c) with the difference
      of means, per seed.
    scale: site -> (S,): the site's mean activation norm.
    bayes_log_odds_GxN, bayes_behaviour_GxN: the exact Bayesian posterior log-odds and read-out,
      mean over each prompt group's prompts (the same groups on every seed).
    vector_shots: N of the vector built from shots.
    model_loss_S: held-out next-token loss per seed; bayes_loss: the Bayes-optimal loss there.
    model_position_loss_SxT, bayes_position_loss_T: the same by position in the document (the
      loss of predicting token t + 2 from the first t + 1): falling with t is learning in context.
    sae: site -> the SAE feature's per-seed arrays (`SAEFeature` fields and ``cosine_vs_means_S``),
      for the sites where the SAE kind was measured.
  """

  sites: tuple[str, ...]
  kinds: tuple[str, ...]
  magnitudes: np.ndarray
  shots: np.ndarray
  log_odds: dict[str, np.ndarray]
  shot_vector_log_odds: dict[str, np.ndarray]
  cosine_shots_vs_means: dict[str, np.ndarray]
  scale: dict[str, np.ndarray]
  bayes_log_odds_GxN: np.ndarray
  bayes_behaviour_GxN: np.ndarray
  vector_shots: int
  model_loss_S: np.ndarray
  bayes_loss: float
  model_position_loss_SxT: np.ndarray
  bayes_position_loss_T: np.ndarray
  sae: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)

  @property
  def num_seeds(self) -> int:
    return self.model_loss_S.shape[0]

  @property
  def bayes_log_odds_N(self) -> np.ndarray:
    """The exact posterior log-odds, mean over prompts (groups are of equal size)."""
    return self.bayes_log_odds_GxN.mean(0)

  @property
  def bayes_behaviour_N(self) -> np.ndarray:
    return self.bayes_behaviour_GxN.mean(0)

  def save(self, path: str) -> None:
    arrays = dict(magnitudes=self.magnitudes, shots=self.shots,
                  bayes_log_odds_GxN=self.bayes_log_odds_GxN,
                  bayes_behaviour_GxN=self.bayes_behaviour_GxN,
                  model_loss_S=self.model_loss_S, bayes_loss=np.asarray(self.bayes_loss),
                  vector_shots=np.asarray(self.vector_shots), sites=np.asarray(self.sites),
                  model_position_loss_SxT=self.model_position_loss_SxT,
                  bayes_position_loss_T=self.bayes_position_loss_T,
                  kinds=np.asarray(self.kinds))
    for field in ("log_odds", "shot_vector_log_odds", "cosine_shots_vs_means", "scale"):
      arrays.update({f"{field}/{site}": value for site, value in getattr(self, field).items()})
    for site, values in self.sae.items():
      arrays.update({f"sae/{name}/{site}": value for name, value in values.items()})
    with open(path, "wb") as handle:
      np.savez(handle, **arrays)

  @classmethod
  def load(cls, path: str) -> "Measured":
    with np.load(path) as arrays:
      sites = tuple(str(site) for site in arrays["sites"])
      per_site = lambda field: {site: arrays[f"{field}/{site}"] for site in sites}
      sae = {}
      for key in arrays.files:
        if key.startswith("sae/"):
          _, name, site = key.split("/", 2)
          sae.setdefault(site, {})[name] = arrays[key]
      return cls(sites=sites, kinds=tuple(str(kind) for kind in arrays["kinds"]),
                 magnitudes=arrays["magnitudes"], shots=arrays["shots"],
                 log_odds=per_site("log_odds"), shot_vector_log_odds=per_site("shot_vector_log_odds"),
                 cosine_shots_vs_means=per_site("cosine_shots_vs_means"), scale=per_site("scale"),
                 bayes_log_odds_GxN=arrays["bayes_log_odds_GxN"],
                 bayes_behaviour_GxN=arrays["bayes_behaviour_GxN"],
                 vector_shots=int(arrays["vector_shots"]), model_loss_S=arrays["model_loss_S"],
                 bayes_loss=float(arrays["bayes_loss"]),
                 model_position_loss_SxT=arrays["model_position_loss_SxT"],
                 bayes_position_loss_T=arrays["bayes_position_loss_T"], sae=sae)


def position_losses(model: Model, params_S, mixture: data.HMMMixture, inputs_BxT: np.ndarray,
                    labels_BxT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(S, T) the model's mean next-token loss at each position, and (T,) the Bayes-optimal one."""

  def one_seed(params):
    logits, _ = model.forward(params, jnp.asarray(inputs_BxT))
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    chosen = jnp.take_along_axis(log_probs, jnp.asarray(labels_BxT)[..., None], axis=-1)[..., 0]
    return -chosen.mean(0)

  model_loss = np.asarray(jax.device_get(jax.jit(jax.vmap(one_seed))(params_S)), np.float64)
  predicted, _ = data.predictive(mixture, inputs_BxT)
  chosen = np.take_along_axis(predicted, np.asarray(labels_BxT)[..., None], axis=-1)[..., 0]
  return model_loss, -np.log(chosen).mean(0)


def _behaviour(log_probs_SxMxPxV: np.ndarray, prompts: Prompts) -> np.ndarray:
  """(S, M, P) log q(y_c) - log q(y_c')."""
  rows = np.arange(prompts.num_prompts)
  log_probs = np.asarray(log_probs_SxMxPxV, np.float64)
  return (log_probs[..., rows, prompts.target_token_P] - log_probs[..., rows, prompts.other_token_P])


def _by_unit(values_SxMxP: np.ndarray, prompts: Prompts) -> np.ndarray:
  """(S * G, M): the mean over each seed's group of prompts, units seed-major."""
  means_SxGxM = np.moveaxis(prompts.group_means(values_SxMxP), -1, 1)
  return means_SxGxM.reshape((-1,) + means_SxGxM.shape[2:])


@dataclasses.dataclass(frozen=True)
class SiteVectors:
  """The steering vectors of one site, per seed.

  directions: kind -> (S, D) unit directions oriented towards the target concept c (the difference
    of means is `landscape.directions.diff_of_means`, from documents of c' to documents of c).
  scale_S: the site's mean activation norm over documents of c and c' (the unit of m).
  shot_vector_SxD: the raw vector built from shots of c' (pointing towards c').
  cosine_S: cosine of the shot vector, negated (towards c), with the difference of means.
  sae: the SAE feature chosen per seed (`_sae_vector`), when the SAE kind is measured.
  sae_cosine_S: cosine of the SAE feature's direction with the difference of means (when measured).
  """

  directions: dict[str, np.ndarray]
  scale_S: np.ndarray
  shot_vector_SxD: np.ndarray
  cosine_S: np.ndarray
  sae: sae_vector.SAEFeature | None = None
  sae_cosine_S: np.ndarray | None = None


def steering_vectors(model: Model, params_S, mixture: data.HMMMixture, *, sites: Sequence[str],
                     kinds: Sequence[str], target: int, other: int, num_documents: int,
                     document_length: int, vector_prompts: Prompts, vector_shots: int, seed: int,
                     sae_settings: sae_vector.SAESettings | None = None
                     ) -> dict[str, SiteVectors]:
  """Every site's steering vectors: differences of means over ``num_documents`` documents of each
  concept (every position), the mean change ``vector_shots`` shots cause at the read-out position
  of ``vector_prompts`` (prompts apart from the measured ones), random directions, and the SAE
  feature (an SAE per seed trained on ``sae_settings.num_documents`` documents of every concept,
  its feature chosen on the documents of c and c')."""
  unknown = sorted(set(kinds) - set(KINDS))
  if unknown:
    raise BadInputError(f"steering kinds {unknown} unknown; expected a subset of {KINDS}")
  if SAE in kinds and sae_settings is None:
    raise BadInputError(f"steering kinds {list(kinds)} include {SAE!r}: pass sae_settings")
  count = vector_prompts.shots
  if vector_shots not in count or 0 not in count:
    raise BadInputError(f"vector prompts have shots {count}; need 0 and vector_shots={vector_shots}")
  rng = np.random.default_rng(seed)
  documents = {concept: data.sample_hmm(mixture, rng, np.full(num_documents, concept),
                                        document_length).astype(np.int32)
               for concept in (target, other)}
  capture = capture_sites(model, sites)
  acts = {concept: jax.device_get(capture(params_S, tokens)) for concept, tokens in documents.items()}
  with_shots = jax.device_get(capture(params_S, vector_prompts.tokens[count.index(vector_shots)]))
  without = jax.device_get(capture(params_S, vector_prompts.tokens[count.index(0)]))
  num_seeds = next(iter(acts[target].values())).shape[0]
  sae_features = {}
  if SAE in kinds:
    # Its own generator: the documents and random directions above are those of a run without it.
    sae_rng = np.random.default_rng([seed, 1])
    concepts = sae_rng.integers(mixture.num_concepts, size=sae_settings.num_documents)
    mixed = capture(params_S, data.sample_hmm(mixture, sae_rng, concepts,
                                              document_length).astype(np.int32))
    for site in sites:
      site_acts = np.asarray(jax.device_get(mixed[site]), np.float32)
      saes, stats = sae_vector.train_site_saes(
          site_acts.reshape(num_seeds, -1, site_acts.shape[-1]), sae_settings, seed=seed)
      sae_features[site] = sae_vector.sae_feature(saes, stats, acts[target][site],
                                                  acts[other][site])
  vectors_by_site = {}
  for site in sites:
    per_kind = {kind: [] for kind in kinds}
    scale, raw, cosine, sae_cosine = [], [], [], []
    for s in range(num_seeds):
      rows = np.concatenate([acts[other][site][s], acts[target][site][s]])  # (2P, T, D)
      rows = rows.reshape(-1, rows.shape[-1])
      scale.append(vectors.activation_scale(rows))
      labels = np.repeat([0, 1], rows.shape[0] // 2)  # 1: documents of the target concept
      means = directions.diff_of_means(rows, labels, site=site).vectors[0]
      shot = vectors.shot_vector(with_shots[site][s][:, -1], without[site][s][:, -1])
      raw.append(shot)
      cosine.append(vectors.cosine(-shot, means))
      for kind in kinds:
        if kind == DIFF_OF_MEANS:
          per_kind[kind].append(means)
        elif kind == SHOTS:
          per_kind[kind].append(vectors.unit(-shot, what=f"the vector from shots at {site}, "
                                                     f"seed {s}"))
        elif kind == SAE:
          per_kind[kind].append(sae_features[site].direction_SxD[s])
          sae_cosine.append(vectors.cosine(per_kind[kind][-1], means))
        else:
          per_kind[kind].append(vectors.random_direction(means.shape[0], rng))
    vectors_by_site[site] = SiteVectors(
        directions={kind: np.stack(rows) for kind, rows in per_kind.items()},
        scale_S=np.asarray(scale), shot_vector_SxD=np.stack(raw), cosine_S=np.asarray(cosine),
        sae=sae_features.get(site), sae_cosine_S=np.asarray(sae_cosine) if sae_cosine else None)
  return vectors_by_site


def measure_grid(model: Model, params_S, prompts: Prompts, *, site: str,
                 directions_KxSxD: np.ndarray, scale_S: np.ndarray, magnitudes: Sequence[float],
                 raw_shot_vector_SxD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(K, U, M, N) behaviour over the grid, and (U,) the raw shot vector's without shots."""
  readout = readout_log_probs(model, site)
  magnitudes = np.asarray(magnitudes, np.float64)
  # shifts (K, S, M, D): every kind's magnitudes stacked on M, so one call covers every kind.
  shifts = (magnitudes[None, None, :, None] * scale_S[None, :, None, None]
            * directions_KxSxD[:, :, None, :])
  num_kinds, num_seeds, num_magnitudes, width = shifts.shape
  stacked = np.transpose(shifts, (1, 0, 2, 3)).reshape(num_seeds, num_kinds * num_magnitudes, width)
  grid = []
  for tokens in prompts.tokens:
    log_probs = readout(params_S, tokens, jnp.asarray(stacked, jnp.float32))
    behaviour = _behaviour(jax.device_get(log_probs), prompts)  # (S, K * M, P)
    grid.append(_by_unit(behaviour, prompts).reshape(-1, num_kinds, num_magnitudes))
  log_odds = np.transpose(np.stack(grid, -1), (1, 0, 2, 3))
  zero_shots = prompts.tokens[prompts.shots.index(0)]
  raw = readout(params_S, zero_shots, jnp.asarray(raw_shot_vector_SxD[:, None, :], jnp.float32))
  shot_vector = _by_unit(_behaviour(jax.device_get(raw), prompts), prompts)[:, 0]
  return log_odds, shot_vector
