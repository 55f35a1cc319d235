"""Prompts of N shots of one concept followed by a query of another, with their exact posteriors.

A prompt with N shots is ``shot_1 ... shot_N query``: each shot ``shot_length`` tokens of the shot
concept c' started at a delimiter, the query ``query_length`` tokens of the target concept c started
at a delimiter. Prompts are nested in N (the prompt with N shots is the first N shots of one pool
plus the same query), so differences between shot counts are paired prompt by prompt.

The behaviour read from a model is log q(y_c) - log q(y_c'), with q its next-token distribution after
the query and y_c, y_c' the tokens concepts c and c' predict there (from the query alone; queries
where they agree are not used). The same read-out of the exact Bayesian predictive, and the exact
posterior log-odds log p(c | prompt) - log p(c' | prompt), come from the forward algorithm.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from landscape import data
from landscape.sites import BadInputError

_QUERY_CANDIDATES = 32  # candidate queries drawn per prompt wanted


@dataclasses.dataclass(frozen=True)
class Prompts:
  """Prompts at every shot count of a grid, and what the exact posterior says of them.

  Attributes:
    shots: the shot counts N, one per entry of ``tokens``.
    tokens: for each N, (P, N * shot_length + query_length) int32 prompts.
    target_token_P, other_token_P: y_c and y_c', the next tokens c and c' predict after the query.
    group_P: each prompt's group (a bootstrap unit within a seed).
    bayes_log_odds_NxP: exact log p(c | prompt) - log p(c' | prompt).
    bayes_behaviour_NxP: log P(y_c) - log P(y_c') under the exact Bayesian predictive.
  """

  shots: tuple[int, ...]
  tokens: tuple[np.ndarray, ...]
  target_token_P: np.ndarray
  other_token_P: np.ndarray
  group_P: np.ndarray
  bayes_log_odds_NxP: np.ndarray
  bayes_behaviour_NxP: np.ndarray

  @property
  def num_prompts(self) -> int:
    return self.target_token_P.shape[0]

  def group_means(self, values_xP: np.ndarray) -> np.ndarray:
    """(..., G): the mean of ``values`` (..., P) over each group's prompts, groups in order."""
    values_xP = np.asarray(values_xP, np.float64)
    return np.stack([values_xP[..., self.group_P == group].mean(-1)
                     for group in np.unique(self.group_P)], -1)


def _queries(mixture: data.HMMMixture, rng: np.random.Generator, *, target: int, other: int,
             num_prompts: int, query_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Queries of the target concept after which c and c' predict different next tokens."""
  start = mixture.delimiter_start()
  candidates = data.sample_hmm(mixture, rng, np.full(num_prompts * _QUERY_CANDIDATES, target),
                               query_length, start_H=start)
  _, per_concept = data.predictive(mixture, candidates)
  target_tokens = per_concept[:, -1, target].argmax(-1)
  other_tokens = per_concept[:, -1, other].argmax(-1)
  usable = np.nonzero(target_tokens != other_tokens)[0]
  if usable.size < num_prompts:
    raise BadInputError(f"prompts: only {usable.size} of {candidates.shape[0]} candidate queries of "
                        f"concept {target} predict a different next token from concept {other}; "
                        f"{num_prompts} needed (try a longer query_length or other concepts)")
  chosen = usable[:num_prompts]
  return candidates[chosen], target_tokens[chosen], other_tokens[chosen]


def make_prompts(mixture: data.HMMMixture, *, shots: tuple[int, ...], num_prompts: int,
                 num_groups: int, shot_length: int, query_length: int, target_concept: int,
                 shot_concept: int, seed: int) -> Prompts:
  """Nested prompts at every shot count of ``shots``, with the exact Bayesian read-outs."""
  for name, concept in (("target_concept", target_concept), ("shot_concept", shot_concept)):
    if not 0 <= concept < mixture.num_concepts:
      raise BadInputError(f"prompts: {name}={concept}; the mixture has {mixture.num_concepts} "
                          "concepts")
  if target_concept == shot_concept:
    raise BadInputError(f"prompts: target_concept and shot_concept are both {target_concept}")
  if num_prompts % num_groups:
    raise BadInputError(f"prompts: num_groups={num_groups} must divide num_prompts={num_prompts}")
  if min(shots) < 0 or list(shots) != sorted(set(shots)):
    raise BadInputError(f"prompts: shots={shots}; expected increasing counts >= 0")
  rng = np.random.default_rng(seed)
  query, target_tokens, other_tokens = _queries(
      mixture, rng, target=target_concept, other=shot_concept, num_prompts=num_prompts,
      query_length=query_length)
  most = max(shots)
  pool = data.sample_hmm(mixture, rng, np.full(num_prompts * max(most, 1), shot_concept),
                         shot_length, start_H=mixture.delimiter_start())
  pool = pool.reshape(num_prompts, max(most, 1) * shot_length)
  tokens, log_odds, behaviour = [], [], []
  rows = np.arange(num_prompts)
  for count in shots:
    prompt = np.concatenate([pool[:, :count * shot_length], query], axis=1)
    posterior = data.concept_log_posterior(mixture, prompt)[:, -1]
    log_odds.append(posterior[:, target_concept] - posterior[:, shot_concept])
    next_token, _ = data.predictive(mixture, prompt)
    last = next_token[:, -1]
    behaviour.append(np.log(last[rows, target_tokens]) - np.log(last[rows, other_tokens]))
    tokens.append(prompt.astype(np.int32))
  return Prompts(shots=tuple(int(count) for count in shots), tokens=tuple(tokens),
                 target_token_P=target_tokens.astype(np.int32),
                 other_token_P=other_tokens.astype(np.int32),
                 group_P=np.arange(num_prompts) % num_groups,
                 bayes_log_odds_NxP=np.stack(log_odds), bayes_behaviour_NxP=np.stack(behaviour))
