"""GINC-style documents: a mixture of hidden Markov models with an exactly known posterior.

Xie et al. (2022, "An Explanation of In-context Learning as Implicit Bayesian Inference"; reference
code p-lambda/incontext-learning, ``generate_data.py``): each latent concept is an HMM over a shared
vocabulary. A hidden state is an (entity, property) pair, index ``value * num_slots + slot``; it
emits the token ``value_table[value, slot]`` deterministically, and slot 0 emits the delimiter,
token 0. Concepts differ in how properties follow each other (the slot transition matrix: a
temperature-softmax mixture of random permutations) and in their start distribution; the entity
transition matrix is shared and biased towards the identity. A document is one concept drawn from
the prior, then one trajectory of its HMM.

One departure from the reference: every transition matrix is mixed with the uniform one by
``smoothing``, so every sequence of emittable tokens has positive probability under every concept
and the posterior of any prompt (shots glued together at arbitrary points) is finite.

Exactness lives in NumPy float64: `concept_log_likelihoods` (the forward algorithm with scaling),
`concept_log_posterior`, `predictive` and `bayes_optimal_loss`. Sampling for training runs in JAX
(`ginc_task`), sampling of prompts on the host (`sample_hmm`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from landscape.data._dataset import Batch
from landscape.data._dataset import Dataset
from landscape.data._tokens import TokenTask
from landscape.data._tokens import token_dataset
from landscape.sites import BadInputError

DELIMITER = 0


@dataclasses.dataclass(frozen=True, eq=False)
class HMMMixture:
  """A mixture of C hidden Markov models over H hidden states and V tokens (float64 NumPy).

  Attributes:
    prior_C: the concepts' prior probabilities.
    start_CxH: each concept's distribution of the first hidden state.
    transition_CxHxH: row h of concept c is p(next state | state h, c).
    emission_HxV: p(token | state), shared by every concept.
    slots: the number of properties (a state's slot is ``state % slots``); slot 0 emits the
      delimiter. Used to start shots at a delimiter (`delimiter_start`).
  """

  prior_C: np.ndarray
  start_CxH: np.ndarray
  transition_CxHxH: np.ndarray
  emission_HxV: np.ndarray
  slots: int = 1

  def __post_init__(self):
    num_concepts, num_states = self.start_CxH.shape
    for name, value, shape in (("prior_C", self.prior_C, (num_concepts,)),
                               ("transition_CxHxH", self.transition_CxHxH,
                                (num_concepts, num_states, num_states)),
                               ("emission_HxV", self.emission_HxV, (num_states, None))):
      if value.ndim != len(shape) or any(want is not None and got != want
                                         for got, want in zip(value.shape, shape)):
        raise BadInputError(f"HMMMixture: {name} has shape {value.shape}; expected {shape} for "
                            f"{num_concepts} concepts and {num_states} states")
    for name, value in (("prior_C", self.prior_C), ("start_CxH", self.start_CxH),
                        ("transition_CxHxH", self.transition_CxHxH),
                        ("emission_HxV", self.emission_HxV)):
      if np.any(value < 0) or not np.allclose(value.sum(-1), 1.0, atol=1e-9):
        raise BadInputError(f"HMMMixture: {name} must hold probability rows (non-negative, summing "
                            f"to 1); row sums {np.round(value.sum(-1), 6).ravel()[:6]}")

  @property
  def num_concepts(self) -> int:
    return self.start_CxH.shape[0]

  @property
  def num_states(self) -> int:
    return self.start_CxH.shape[1]

  @property
  def vocab_size(self) -> int:
    return self.emission_HxV.shape[1]

  def delimiter_start(self) -> np.ndarray:
    """(H,) the start distribution of a shot: uniform over the states of slot 0."""
    start_H = (np.arange(self.num_states) % self.slots == 0).astype(np.float64)
    return start_H / start_H.sum()


def _softmax(x: np.ndarray, temperature: float) -> np.ndarray:
  x = x / temperature
  x = np.exp(x - x.max())
  return x / x.sum()


def _permutation_mixture(rng: np.random.Generator, size: int, temperature: float) -> np.ndarray:
  """GINC's ``generate_transmat_block``: a softmax(temperature)-weighted sum of ``size`` permutations."""
  mixing = _softmax(rng.random(size) - 0.5, temperature)
  permutations = np.stack([np.eye(size)[rng.permutation(size)] for _ in range(size)])
  return np.einsum("p,pij->ij", mixing, permutations)


def ginc_mixture(*, num_concepts: int = 4, num_values: int = 4, num_slots: int = 4,
                 vocab_size: int = 16, transition_temperature: float = 0.1,
                 start_temperature: float = 10.0, value_identity: float = 0.9,
                 smoothing: float = 0.01, seed: int = 0) -> HMMMixture:
  """A GINC mixture (uniform prior over ``num_concepts``), fixed by ``seed``.

  The reference's published dataset: 10 concepts, 10 values, 10 slots, 50 symbols, transition
  temperature 0.1, start temperature 10, value identity coefficient 0.9.
  """
  for name, value, low in (("num_concepts", num_concepts, 1), ("num_values", num_values, 1),
                           ("num_slots", num_slots, 2), ("vocab_size", vocab_size, 2)):
    if value < low:
      raise BadInputError(f"ginc_mixture: {name}={value}; must be at least {low}")
  if not 0.0 <= smoothing < 1.0:
    raise BadInputError(f"ginc_mixture: smoothing={smoothing}; expected a value in [0, 1)")
  if not 0.0 <= value_identity <= 1.0:
    raise BadInputError(f"ginc_mixture: value_identity={value_identity}; expected a value in [0, 1]")
  rng = np.random.default_rng(seed)
  num_states = num_values * num_slots
  value_table = rng.integers(1, vocab_size, size=(num_values, num_slots))
  value_table[:, 0] = DELIMITER
  emission_HxV = np.zeros((num_states, vocab_size))
  states = np.arange(num_states)
  emission_HxV[states, value_table[states // num_slots, states % num_slots]] = 1.0
  value_transition = ((1 - value_identity) * _permutation_mixture(rng, num_values,
                                                                  transition_temperature)
                      + value_identity * np.eye(num_values))
  starts, transitions = [], []
  for _ in range(num_concepts):
    slot_transition = _permutation_mixture(rng, num_slots, transition_temperature)
    transition = np.kron(value_transition, slot_transition)
    transitions.append((1 - smoothing) * transition + smoothing / num_states)
    starts.append(_softmax(rng.random(num_states) - 0.5, start_temperature))
  return HMMMixture(prior_C=np.full(num_concepts, 1.0 / num_concepts), start_CxH=np.stack(starts),
                    transition_CxHxH=np.stack(transitions), emission_HxV=emission_HxV,
                    slots=num_slots)


def _check_tokens(mixture: HMMMixture, tokens_BxT: np.ndarray) -> np.ndarray:
  tokens_BxT = np.asarray(tokens_BxT)
  if tokens_BxT.ndim != 2 or tokens_BxT.shape[1] < 1:
    raise BadInputError(f"tokens have shape {tokens_BxT.shape}; expected (B, T) with T >= 1")
  if tokens_BxT.min() < 0 or tokens_BxT.max() >= mixture.vocab_size:
    raise BadInputError(f"tokens range over [{tokens_BxT.min()}, {tokens_BxT.max()}]; the mixture's "
                        f"vocabulary is [0, {mixture.vocab_size})")
  return tokens_BxT


def _forward(mixture: HMMMixture, tokens_BxT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The scaled forward pass of every concept's HMM over every sequence.

  Returns (log_likelihood_BxTxC, filtered_BxTxCxH): log p(x_1..x_t | c) for every prefix, and
  p(h_t | x_1..x_t, c). A prefix impossible under c has log-likelihood -inf and a zero filter.
  """
  tokens_BxT = _check_tokens(mixture, tokens_BxT)
  start_CxH = mixture.start_CxH
  batch, length = tokens_BxT.shape
  emission_VxH = mixture.emission_HxV.T
  log_likelihood = np.zeros((batch, length, mixture.num_concepts))
  filtered = np.zeros((batch, length, mixture.num_concepts, mixture.num_states))
  running = np.zeros((batch, mixture.num_concepts))
  with np.errstate(divide="ignore", invalid="ignore"):
    for t in range(length):
      if t == 0:
        predicted_BxCxH = np.broadcast_to(start_CxH, (batch,) + start_CxH.shape)
      else:
        predicted_BxCxH = np.einsum("bch,chk->bck", filtered[:, t - 1], mixture.transition_CxHxH)
      joint_BxCxH = predicted_BxCxH * emission_VxH[tokens_BxT[:, t]][:, None, :]
      scale_BxC = joint_BxCxH.sum(-1)
      running = running + np.log(scale_BxC)
      log_likelihood[:, t] = running
      filtered[:, t] = np.where(scale_BxC[..., None] > 0, joint_BxCxH / scale_BxC[..., None], 0.0)
  return log_likelihood, filtered


def concept_log_likelihoods(mixture: HMMMixture, tokens_BxT: np.ndarray) -> np.ndarray:
  """(B, T, C) float64: log p(x_1..x_t | concept c) for every prefix length t = 1..T."""
  return _forward(mixture, tokens_BxT)[0]


def _log_posterior(mixture: HMMMixture, log_likelihood_BxTxC: np.ndarray) -> np.ndarray:
  with np.errstate(divide="ignore"):
    joint = log_likelihood_BxTxC + np.log(mixture.prior_C)
  top = joint.max(-1, keepdims=True)
  return joint - (top + np.log(np.exp(joint - top).sum(-1, keepdims=True)))


def concept_log_posterior(mixture: HMMMixture, tokens_BxT: np.ndarray) -> np.ndarray:
  """(B, T, C) float64: log p(c | x_1..x_t), the exact Bayesian posterior after each prefix."""
  return _log_posterior(mixture, concept_log_likelihoods(mixture, tokens_BxT))


def predictive(mixture: HMMMixture, tokens_BxT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Next-token distributions after each prefix: (mixture_BxTxV, per_concept_BxTxCxV), float64.

  ``per_concept[b, t, c]`` is p(x_{t+1} | x_1..x_t, c); ``mixture[b, t]`` is the Bayes-optimal
  p(x_{t+1} | x_1..x_t) = sum_c p(c | x_1..x_t) p(x_{t+1} | x_1..x_t, c).
  """
  log_likelihood, filtered = _forward(mixture, tokens_BxT)
  per_concept = np.einsum("btch,chk,kv->btcv", filtered, mixture.transition_CxHxH,
                          mixture.emission_HxV)
  posterior = np.exp(_log_posterior(mixture, log_likelihood))
  return np.einsum("btc,btcv->btv", posterior, per_concept), per_concept


def bayes_optimal_loss(mixture: HMMMixture, tokens_BxT: np.ndarray) -> float:
  """Mean over sequences and positions 2..T of -log p(x_t | x_1..x_{t-1}) under the mixture (nats).

  The cross-entropy of the Bayes-optimal predictor on next-token labels x_2..x_T: what a model
  trained on these documents can reach at best.
  """
  tokens_BxT = _check_tokens(mixture, tokens_BxT)
  mixture_BxTxV, _ = predictive(mixture, tokens_BxT[:, :-1])
  chosen = np.take_along_axis(mixture_BxTxV, tokens_BxT[:, 1:, None], axis=-1)[..., 0]
  return float(-np.mean(np.log(chosen)))


def sample_hmm(mixture: HMMMixture, rng: np.random.Generator, concepts_B: np.ndarray, length: int,
               *, start_H: np.ndarray | None = None) -> np.ndarray:
  """(B, length) int64 tokens: one trajectory of concept ``concepts_B[b]``'s HMM per row, on the host.

  ``start_H`` replaces every concept's start distribution (e.g. `HMMMixture.delimiter_start`).
  """
  concepts_B = np.asarray(concepts_B)
  if concepts_B.min() < 0 or concepts_B.max() >= mixture.num_concepts:
    raise BadInputError(f"sample_hmm: concepts range over [{concepts_B.min()}, {concepts_B.max()}]; "
                        f"the mixture has {mixture.num_concepts}")
  batch = concepts_B.shape[0]

  def draw(probabilities_BxK):
    cumulative = np.cumsum(probabilities_BxK, axis=-1)
    return np.minimum((rng.random((batch, 1)) * cumulative[:, -1:] > cumulative).sum(-1),
                      probabilities_BxK.shape[-1] - 1)

  start_BxH = (mixture.start_CxH[concepts_B] if start_H is None
               else np.broadcast_to(start_H, (batch, mixture.num_states)))
  hidden = draw(start_BxH)
  tokens = np.zeros((batch, length), np.int64)
  for t in range(length):
    if t:
      hidden = draw(mixture.transition_CxHxH[concepts_B, hidden])
    tokens[:, t] = draw(mixture.emission_HxV[hidden])
  return tokens


def ginc_task(mixture: HMMMixture, seq_len: int) -> TokenTask:
  """Documents of ``seq_len + 1`` tokens drawn in JAX; next-token labels at every position.

  Fields: inputs, labels, label_mask (B, seq_len) and concept (B,), the document's concept.
  """
  log = lambda p: jnp.asarray(np.log(np.maximum(p, 1e-30)), jnp.float32)
  log_prior, log_start = log(mixture.prior_C), log(mixture.start_CxH)
  log_transition, log_emission = log(mixture.transition_CxHxH), log(mixture.emission_HxV)

  def generate(key: jax.Array, batch_size: int) -> Batch:
    concept_key, start_key, steps_key = jax.random.split(key, 3)
    concept_B = jax.random.categorical(concept_key, log_prior, shape=(batch_size,))
    first_B = jax.random.categorical(start_key, log_start[concept_B])

    def advance(hidden_B, step_key):
      emit_key, move_key = jax.random.split(step_key)
      token_B = jax.random.categorical(emit_key, log_emission[hidden_B])
      following_B = jax.random.categorical(move_key, log_transition[concept_B, hidden_B])
      return following_B, token_B

    _, tokens_TxB = jax.lax.scan(advance, first_B, jax.random.split(steps_key, seq_len + 1))
    tokens_BxT1 = tokens_TxB.T.astype(jnp.int32)
    return dict(inputs=tokens_BxT1[:, :-1], labels=tokens_BxT1[:, 1:],
                label_mask=jnp.ones((batch_size, seq_len), jnp.float32),
                concept=concept_B.astype(jnp.int32))

  generate.vocab_size = mixture.vocab_size
  return generate


def ginc_dataset(mixture: HMMMixture, seq_len: int, *, eval_size: int = 256,
                 eval_seed: int = 1_000_003) -> Dataset:
  """`ginc_task` as a `Dataset`; ``info["bayes_optimal_loss"]`` is the exact optimum on ``heldout``."""
  task = ginc_task(mixture, seq_len)
  dataset = token_dataset("ginc", task, eval_size=eval_size, eval_seed=eval_seed)
  heldout = dataset.eval_sets["heldout"]
  tokens = np.concatenate([heldout["inputs"], heldout["labels"][:, -1:]], axis=1)
  return dataclasses.replace(dataset, info=dict(
      dataset.info, vocab_size=mixture.vocab_size, seq_len=seq_len,
      num_concepts=mixture.num_concepts, bayes_optimal_loss=bayes_optimal_loss(mixture, tokens)))
