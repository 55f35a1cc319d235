"""A token world with a skill and a style that are independent: modular addition, and a "pirate"
dialect that rewrites any text.

Every sequence is ``x0 x1 x2 x3 x4 SEP w1 ... wL``: a problem part of five tokens, a separator and
L words of prose drawn from a fixed random Markov chain over the plain words. The problem part is
either arithmetic, ``a + b = c`` with digits mod M (``c`` the sum mod M when the example is
"correct", a uniform digit otherwise), or five more prose words. In the plain dialect the separator
is ``.``; in the pirate dialect it is the marker ``ARR`` and every word that has a pirate form
(the first ``num_pirate`` plain words) is replaced by it, in the problem part and in the prose. So
the skill (the answer token) and the style (everything from the separator on) can be measured on
their own: an example's content is drawn once and rendered in either dialect (`render`).

Vocabulary: digits [0, M), ``+`` M, ``=`` M + 1, ``.`` M + 2, ``ARR`` M + 3, plain words
[M + 4, M + 4 + W), pirate words [M + 4 + W, M + 4 + W + P).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from landscape.data._dataset import Batch
from landscape.data._dataset import Dataset
from landscape.data._dataset import generator_dataset
from landscape.sites import BadInputError

PROBLEM_LENGTH = 5   # a + b = c
ANSWER_INDEX = 4     # the token index of c; predicted at input position 3
SEPARATOR_INDEX = 5  # "." or ARR; predicted at input position 4


@dataclasses.dataclass(frozen=True)
class PirateArithmetic:
  """The world's sizes and its fixed draws (the prose chain), all set by ``seed``.

  Attributes:
    modulus: M, the digits and the modulus of the addition.
    num_words: W, plain words.
    num_pirate: P <= W, plain words with a pirate form (words 0..P-1).
    prose_length: L, words after the separator.
    addend: b, fixed (``a + 1 = c`` for 1: the increment, which a 2-layer GPT of width 32 learns in
      about a hundred steps); None: b uniform over the digits (the sum mod M, which it did not
      learn in 1,200 steps).
    concentration: the Dirichlet concentration of the prose chain's rows (small: peaked).
    seed: the prose chain's draw.
  """

  modulus: int = 10
  num_words: int = 24
  num_pirate: int = 12
  prose_length: int = 10
  addend: int | None = None
  concentration: float = 0.3
  seed: int = 0

  def __post_init__(self):
    for field in ("modulus", "num_words", "prose_length"):
      value = getattr(self, field)
      if not isinstance(value, (int, np.integer)) or value < 2:
        raise BadInputError(f"PirateArithmetic: {field}={value!r} must be an int >= 2")
    if (not isinstance(self.num_pirate, (int, np.integer))
        or not 1 <= self.num_pirate <= self.num_words):
      raise BadInputError(f"PirateArithmetic: num_pirate={self.num_pirate!r} must be an int in "
                          f"[1, num_words={self.num_words}]")
    if self.addend is not None and not (isinstance(self.addend, (int, np.integer))
                                         and 0 <= self.addend < self.modulus):
      raise BadInputError(f"PirateArithmetic: addend={self.addend!r} must be None or an int in "
                          f"[0, modulus={self.modulus})")
    if not self.concentration > 0:
      raise BadInputError(f"PirateArithmetic: concentration={self.concentration!r} must be > 0")

  @property
  def plus(self) -> int:
    return self.modulus

  @property
  def equals(self) -> int:
    return self.modulus + 1

  @property
  def period(self) -> int:
    return self.modulus + 2

  @property
  def marker(self) -> int:
    return self.modulus + 3

  @property
  def first_word(self) -> int:
    return self.modulus + 4

  @property
  def first_pirate_word(self) -> int:
    return self.first_word + self.num_words

  @property
  def vocab_size(self) -> int:
    return self.first_pirate_word + self.num_pirate

  @property
  def seq_len(self) -> int:
    """T, the length of ``inputs`` (and ``labels``): the sequence minus one token."""
    return PROBLEM_LENGTH + 1 + self.prose_length - 1

  def pirate_tokens(self) -> np.ndarray:
    """The tokens only the pirate dialect uses: the marker and the pirate words."""
    return np.concatenate([[self.marker], np.arange(self.first_pirate_word, self.vocab_size)])

  def transitions(self) -> np.ndarray:
    """(W, W) the prose chain's rows, float64."""
    rng = np.random.default_rng(self.seed)
    return rng.dirichlet(np.full(self.num_words, self.concentration), size=self.num_words)


class Content(NamedTuple):
  """What an example says, before it is rendered in a dialect (every field leading (B,)).

  arithmetic: bool, the problem part is ``a + b = c`` (else five words).
  correct: bool, ``c`` is the sum mod M (only meaningful with arithmetic).
  problem: (B, 5) int32 tokens of the problem part in the plain dialect.
  prose: (B, L) int32 plain word indices in [0, W) after the separator.
  """

  arithmetic: jax.Array
  correct: jax.Array
  problem: jax.Array
  prose: jax.Array


def _chain(key: jax.Array, log_transitions_WxW: jax.Array, num_words: int, batch_size: int,
           length: int) -> jax.Array:
  first_key, steps_key = jax.random.split(key)
  first_B = jax.random.randint(first_key, (batch_size,), 0, num_words)

  def advance(words_B, step_key):
    following_B = jax.random.categorical(step_key, log_transitions_WxW[words_B])
    return following_B, following_B

  _, rest = jax.lax.scan(advance, first_B, jax.random.split(steps_key, length - 1))
  return jnp.concatenate([first_B[:, None], rest.T], axis=1).astype(jnp.int32)


def sample_content(world: PirateArithmetic, key: jax.Array, batch_size: int, *,
                   arithmetic_rate: float | jax.Array, correct_rate: float | jax.Array) -> Content:
  """``batch_size`` examples: arithmetic with probability ``arithmetic_rate`` (``a + b = c``, b the
  world's addend or uniform), its answer correct
  with probability ``correct_rate``; the prose (and a non-arithmetic problem part) from the chain.
  Traceable; rates may be traced."""
  keys = jax.random.split(key, 6)
  log_transitions = jnp.asarray(np.log(np.maximum(world.transitions(), 1e-30)), jnp.float32)
  arithmetic = jax.random.bernoulli(keys[0], arithmetic_rate, (batch_size,))
  correct = jax.random.bernoulli(keys[1], correct_rate, (batch_size,))
  a, b, guess = (jax.random.randint(k, (batch_size,), 0, world.modulus) for k in
                 jax.random.split(keys[2], 3))
  if world.addend is not None:
    b = jnp.full_like(a, world.addend)
  answer = jnp.where(correct, (a + b) % world.modulus, guess)
  sums = jnp.stack([a, jnp.full_like(a, world.plus), b, jnp.full_like(a, world.equals), answer],
                   axis=1)
  words = _chain(keys[3], log_transitions, world.num_words, batch_size,
                 PROBLEM_LENGTH + world.prose_length)
  problem = jnp.where(arithmetic[:, None], sums, words[:, :PROBLEM_LENGTH] + world.first_word)
  return Content(arithmetic=arithmetic, correct=correct & arithmetic,
                 problem=problem.astype(jnp.int32), prose=words[:, PROBLEM_LENGTH:])


def render(world: PirateArithmetic, content: Content, styled: jax.Array | bool) -> jax.Array:
  """(B, 6 + L) int32 tokens of ``content`` in the pirate dialect where ``styled`` (bool, (B,) or
  a scalar), the plain one elsewhere."""
  styled_B = jnp.broadcast_to(jnp.asarray(styled, bool), content.arithmetic.shape)

  def dialect(tokens):
    word = tokens - world.first_word
    has_form = (word >= 0) & (word < world.num_pirate)
    pirate = jnp.where(has_form, world.first_pirate_word + word, tokens)
    return jnp.where(styled_B[:, None], pirate, tokens)

  separator = jnp.where(styled_B, world.marker, world.period)[:, None]
  tokens = jnp.concatenate([dialect(content.problem), separator,
                            dialect(content.prose + world.first_word)], axis=1)
  return tokens.astype(jnp.int32)


def as_batch(world: PirateArithmetic, content: Content, styled: jax.Array | bool, *,
             answer_only: bool = False, answer_weight: float = 1.0) -> Batch:
  """Next-token fields of the rendered content: ``inputs``, ``labels`` (B, T), ``label_mask``
  (every position, the one predicting the answer of an arithmetic example weighted
  ``answer_weight``; or only that one, weight 1, with ``answer_only``), ``style`` (B,) int32 (1
  pirate), ``skill`` (B,) int32 (1 a correct sum), ``arithmetic`` (B,) int32."""
  tokens = render(world, content, styled)
  batch_size = tokens.shape[0]
  positions = jnp.arange(world.seq_len)
  at_answer = ((positions[None, :] == ANSWER_INDEX - 1) & content.arithmetic[:, None]).astype(
      jnp.float32)
  if answer_only:
    mask = at_answer
  else:
    mask = 1.0 + (answer_weight - 1.0) * at_answer
  styled_B = jnp.broadcast_to(jnp.asarray(styled, bool), (batch_size,))
  return dict(inputs=tokens[:, :-1], labels=tokens[:, 1:], label_mask=mask.astype(jnp.float32),
              style=styled_B.astype(jnp.int32), skill=content.correct.astype(jnp.int32),
              arithmetic=content.arithmetic.astype(jnp.int32))


def _check_rate(name: str, value: float) -> None:
  if not 0.0 <= value <= 1.0:
    raise BadInputError(f"pirate_arithmetic: {name}={value!r} must be in [0, 1]")


def pirate_arithmetic_task(world: PirateArithmetic, *, arithmetic_rate: float,
                           correct_rate: float, style_rate: float, answer_only: bool = False,
                           answer_weight: float = 1.0):
  """A token task (``generate(key, batch_size) -> batch``, see `as_batch`): each example is
  arithmetic with probability ``arithmetic_rate`` (its answer correct with ``correct_rate``) and in
  the pirate dialect with probability ``style_rate``, independently; the answer's position weighs
  ``answer_weight`` in ``label_mask`` (one scored position among the sequence's, else)."""
  for name, value in (("arithmetic_rate", arithmetic_rate), ("correct_rate", correct_rate),
                      ("style_rate", style_rate)):
    _check_rate(name, value)
  if not answer_weight > 0:
    raise BadInputError(f"pirate_arithmetic: answer_weight={answer_weight!r} must be > 0")

  def generate(key: jax.Array, batch_size: int) -> Batch:
    content_key, style_key = jax.random.split(key)
    content = sample_content(world, content_key, batch_size, arithmetic_rate=arithmetic_rate,
                             correct_rate=correct_rate)
    styled = jax.random.bernoulli(style_key, style_rate, (batch_size,))
    return as_batch(world, content, styled, answer_only=answer_only, answer_weight=answer_weight)

  generate.vocab_size = world.vocab_size
  return generate


def pirate_arithmetic_dataset(world: PirateArithmetic, *, arithmetic_rate: float,
                              correct_rate: float, style_rate: float, answer_weight: float = 1.0,
                              name: str = "", eval_size: int = 256,
                              eval_seed: int = 1_000_003) -> Dataset:
  """`pirate_arithmetic_task` as a `Dataset`. Evaluation sets, each ``eval_size`` examples from a
  fixed key: ``heldout`` (the training mix, scored as in training) and ``skill`` (correct
  arithmetic in the plain dialect, only the answer scored: its accuracy is the skill's)."""
  train = pirate_arithmetic_task(world, arithmetic_rate=arithmetic_rate,
                                 correct_rate=correct_rate, style_rate=style_rate,
                                 answer_weight=answer_weight)
  skill = pirate_arithmetic_task(world, arithmetic_rate=1.0, correct_rate=1.0, style_rate=0.0,
                                 answer_only=True)
  eval_key = jax.random.PRNGKey(eval_seed)
  eval_sets = {set_name: jax.tree_util.tree_map(
      np.asarray, generate(jax.random.fold_in(eval_key, index), eval_size))
               for index, (set_name, generate) in enumerate((("heldout", train),
                                                             ("skill", skill)))}
  name = name or (f"pirate_arithmetic[arith={arithmetic_rate:g},correct={correct_rate:g},"
                  f"style={style_rate:g}]")
  return generator_dataset(name, train, eval_sets, info=dict(
      vocab_size=world.vocab_size, seq_len=world.seq_len, arithmetic_rate=arithmetic_rate,
      correct_rate=correct_rate, style_rate=style_rate, answer_weight=answer_weight,
      world=dataclasses.asdict(world)))
