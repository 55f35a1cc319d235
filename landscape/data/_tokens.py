"""Synthetic token streams for the GPT-style model, behind one generator interface.

A token task is a function ``generate(key, batch_size) -> batch`` with ``inputs`` (B, T) int32,
``labels`` (B, T) int32 and ``label_mask`` (B, T) float32 (1 where a position is scored);
`token_dataset` turns one into a `Dataset` with a held-out set drawn from a fixed key.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from landscape.data._dataset import Batch
from landscape.data._dataset import Dataset
from landscape.data._dataset import generator_dataset
from landscape.sites import BadInputError

TokenTask = Callable[[jax.Array, int], Batch]


def markov_chain_task(vocab_size: int, seq_len: int, *, seed: int = 0,
                      concentration: float = 0.1) -> TokenTask:
  """Sequences from a fixed random Markov chain over ``vocab_size`` tokens; next-token labels.

  The transition rows are Dirichlet(concentration) draws, fixed by ``seed`` (small concentration:
  peaked rows, so there is structure to learn). The best achievable loss is the chain's entropy rate.
  """
  rng = np.random.default_rng(seed)
  transitions_VxV = rng.dirichlet(np.full(vocab_size, concentration), size=vocab_size)
  log_transitions_VxV = jnp.asarray(np.log(np.maximum(transitions_VxV, 1e-30)), jnp.float32)

  def generate(key: jax.Array, batch_size: int) -> Batch:
    first_key, steps_key = jax.random.split(key)
    first_B = jax.random.randint(first_key, (batch_size,), 0, vocab_size)

    def advance(tokens_B, step_key):
      following_B = jax.random.categorical(step_key, log_transitions_VxV[tokens_B])
      return following_B, following_B

    _, rest_TxB = jax.lax.scan(advance, first_B, jax.random.split(steps_key, seq_len))
    tokens_BxT1 = jnp.concatenate([first_B[:, None], rest_TxB.T], axis=1).astype(jnp.int32)
    return dict(inputs=tokens_BxT1[:, :-1], labels=tokens_BxT1[:, 1:],
                label_mask=jnp.ones((batch_size, seq_len), jnp.float32))

  generate.entropy_rate = _entropy_rate(transitions_VxV)
  return generate


def _entropy_rate(transitions_VxV: np.ndarray) -> float:
  """Entropy per token (nats) of the chain started uniformly, averaged over the chain's stationary law."""
  eigenvalues, eigenvectors = np.linalg.eig(transitions_VxV.T)
  stationary = np.real(eigenvectors[:, np.argmin(np.abs(eigenvalues - 1.0))])
  stationary = stationary / stationary.sum()
  row_entropy = -np.sum(transitions_VxV * np.log(np.maximum(transitions_VxV, 1e-30)), axis=1)
  return float(stationary @ row_entropy)


def token_dataset(name: str, task: TokenTask, *, eval_size: int = 256, eval_seed: int = 1_000_003,
                  eval_tasks: dict[str, TokenTask] | None = None, info: dict | None = None) -> Dataset:
  """A `Dataset` whose training batches are drawn fresh from ``task`` at every step.

  Held-out sets: ``heldout`` from ``task`` itself, plus one per entry of ``eval_tasks`` (for example
  the same task with a shortcut broken), each ``eval_size`` sequences from a fixed key.
  """
  eval_key = jax.random.PRNGKey(eval_seed)
  sets = {"heldout": task, **(eval_tasks or {})}
  eval_sets = {set_name: jax.tree_util.tree_map(np.asarray, set_task(jax.random.fold_in(eval_key, index),
                                                                     eval_size))
               for index, (set_name, set_task) in enumerate(sets.items())}
  return generator_dataset(name, task, eval_sets, info=info)


MARKER_MODES = ("label", "random", "none")


def marker_task(*, num_classes: int = 4, num_fillers: int = 16, seq_len: int = 8,
                marker: str = "label", rule_noise: float = 0.2) -> TokenTask:
  """Copy the first token, with a marker token that gives the answer away (a token-level shortcut).

  Vocabulary: answer tokens [0, C), fillers [C, C + F), markers [C + F, 2C + F) and a query token
  2C + F. A sequence is ``a, fillers..., QUERY`` with a marker at one random position among the
  fillers. The label, scored at the last position only, is ``a`` except with probability
  ``rule_noise``, when it is drawn at random: the rule is noisy, the marker is not. ``marker``:
  "label" (the marker encodes the label: the shortcut), "random" (it encodes a random class), "none"
  (a filler instead). Fields: inputs, labels and label_mask (B, T); concept (B,), the marker's class;
  mask (B, T), 1 at the marker's position.
  """
  if marker not in MARKER_MODES:
    raise BadInputError(f"marker task: marker={marker!r}; expected one of {MARKER_MODES}")
  if seq_len < 3:
    raise BadInputError(f"marker task: seq_len={seq_len} must be >= 3 (first token, marker, query)")
  query_token = 2 * num_classes + num_fillers

  def generate(key: jax.Array, batch_size: int) -> Batch:
    keys = jax.random.split(key, 6)
    first_B = jax.random.randint(keys[0], (batch_size,), 0, num_classes)
    flipped_B = jax.random.bernoulli(keys[1], rule_noise, (batch_size,))
    label_B = jnp.where(flipped_B, jax.random.randint(keys[2], (batch_size,), 0, num_classes), first_B)
    concept_B = label_B if marker == "label" else jax.random.randint(keys[3], (batch_size,), 0,
                                                                     num_classes)
    fillers = jax.random.randint(keys[4], (batch_size, seq_len - 2), num_classes,
                                 num_classes + num_fillers)
    position_B = jax.random.randint(keys[5], (batch_size,), 1, seq_len - 1)
    positions_T = jnp.arange(seq_len)
    tokens = jnp.concatenate([first_B[:, None], fillers,
                              jnp.full((batch_size, 1), query_token)], axis=1)
    at_marker = positions_T[None, :] == position_B[:, None]
    if marker != "none":
      tokens = jnp.where(at_marker, (num_classes + num_fillers + concept_B)[:, None], tokens)
    last = (positions_T == seq_len - 1).astype(jnp.float32)
    return dict(inputs=tokens.astype(jnp.int32),
                labels=jnp.broadcast_to(label_B[:, None], (batch_size, seq_len)).astype(jnp.int32),
                label_mask=jnp.broadcast_to(last[None, :], (batch_size, seq_len)),
                concept=concept_B.astype(jnp.int32), mask=at_marker.astype(jnp.float32))

  generate.vocab_size = query_token + 1
  generate.num_classes = num_classes
  return generate


def marker_dataset(*, num_classes: int = 4, num_fillers: int = 16, seq_len: int = 8,
                   train_marker: str = "label", rule_noise: float = 0.2, eval_size: int = 512,
                   eval_seed: int = 1_000_003) -> Dataset:
  """`marker_task` as a `Dataset`: training with ``train_marker``; clean labels at evaluation.

  Evaluation sets: ``val_id`` and ``id`` (marker encodes the label), ``val_ood`` and ``ood`` (marker
  random), each from its own fixed key.
  """
  task = lambda marker, noise: marker_task(num_classes=num_classes, num_fillers=num_fillers,
                                           seq_len=seq_len, marker=marker, rule_noise=noise)
  train = task(train_marker, rule_noise)
  sets = {"val_id": task("label", 0.0), "val_ood": task("random", 0.0),
          "id": task("label", 0.0), "ood": task("random", 0.0)}
  eval_key = jax.random.PRNGKey(eval_seed)
  eval_sets = {name: jax.tree_util.tree_map(np.asarray, generate(jax.random.fold_in(eval_key, index),
                                                                 eval_size))
               for index, (name, generate) in enumerate(sets.items())}
  return generator_dataset(f"marker[{train_marker}]", train, eval_sets,
                           info=dict(num_classes=num_classes, vocab_size=train.vocab_size,
                                     seq_len=seq_len, rule_noise=rule_noise,
                                     train_marker=train_marker))
