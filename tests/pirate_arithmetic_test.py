"""The pirate-arithmetic token world: independent skill and style, rendered from one content."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from landscape import data
from landscape.data import _pirate_arithmetic as pirate
from landscape.sites import BadInputError

WORLD = data.PirateArithmetic(modulus=7, num_words=9, num_pirate=4, prose_length=6, seed=3)


def _content(seed, size=512, arithmetic_rate=0.5, correct_rate=0.7):
  return pirate.sample_content(WORLD, jax.random.PRNGKey(seed), size,
                               arithmetic_rate=arithmetic_rate, correct_rate=correct_rate)


class PirateArithmeticTest(parameterized.TestCase):

  def test_vocabulary_and_shapes(self):
    batch = data.pirate_arithmetic_task(WORLD, arithmetic_rate=0.5, correct_rate=1.0,
                                        style_rate=0.5)(jax.random.PRNGKey(0), 32)
    self.assertEqual(WORLD.vocab_size, 7 + 4 + 9 + 4)
    self.assertEqual(batch["inputs"].shape, (32, WORLD.seq_len))
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["labels"][:, :-1])
    self.assertGreaterEqual(int(batch["inputs"].min()), 0)
    self.assertLess(int(batch["labels"].max()), WORLD.vocab_size)

  def test_answers_are_the_sum_when_correct(self):
    content = _content(1)
    problem = np.asarray(content.problem)
    arithmetic, correct = np.asarray(content.arithmetic), np.asarray(content.correct)
    self.assertTrue(0.35 < arithmetic.mean() < 0.65)  # 512 Bernoulli(0.5) draws: 5 sd ~ 0.11
    np.testing.assert_array_equal(problem[arithmetic][:, [1, 3]],
                                  np.broadcast_to([WORLD.plus, WORLD.equals],
                                                  (arithmetic.sum(), 2)))
    sums = (problem[:, 0] + problem[:, 2]) % WORLD.modulus
    np.testing.assert_array_equal(problem[correct, 4], sums[correct])
    self.assertTrue(np.all(problem[~arithmetic] >= WORLD.first_word))

  def test_fixed_addend(self):
    world = data.PirateArithmetic(modulus=7, num_words=9, num_pirate=4, prose_length=6, addend=1)
    content = pirate.sample_content(world, jax.random.PRNGKey(4), 256, arithmetic_rate=1.0,
                                    correct_rate=1.0)
    problem = np.asarray(content.problem)
    np.testing.assert_array_equal(problem[:, 2], 1)
    np.testing.assert_array_equal(problem[:, 4], (problem[:, 0] + 1) % 7)

  def test_answer_weight(self):
    batch = data.pirate_arithmetic_task(WORLD, arithmetic_rate=1.0, correct_rate=1.0,
                                        style_rate=0.0, answer_weight=3.0)(jax.random.PRNGKey(6), 4)
    expected = np.ones((4, WORLD.seq_len))
    expected[:, pirate.ANSWER_INDEX - 1] = 3.0
    np.testing.assert_array_equal(batch["label_mask"], expected)

  def test_dialects_differ_exactly_by_the_substitution_and_the_marker(self):
    content = _content(2)
    plain = np.asarray(pirate.render(WORLD, content, False))
    styled = np.asarray(pirate.render(WORLD, content, True))
    np.testing.assert_array_equal(plain[:, pirate.SEPARATOR_INDEX], WORLD.period)
    np.testing.assert_array_equal(styled[:, pirate.SEPARATOR_INDEX], WORLD.marker)
    word = plain - WORLD.first_word
    substituted = (word >= 0) & (word < WORLD.num_pirate)
    expected = np.where(substituted, WORLD.first_pirate_word + word, plain)
    expected[:, pirate.SEPARATOR_INDEX] = WORLD.marker
    np.testing.assert_array_equal(styled, expected)
    self.assertFalse(np.isin(plain, WORLD.pirate_tokens()).any())
    # The answer (the skill) is the same token in both dialects.
    np.testing.assert_array_equal(plain[:, pirate.ANSWER_INDEX][np.asarray(content.arithmetic)],
                                  styled[:, pirate.ANSWER_INDEX][np.asarray(content.arithmetic)])

  def test_prose_follows_the_chain(self):
    content = _content(3, size=4096)
    prose = np.asarray(content.prose)
    counts = np.zeros((WORLD.num_words, WORLD.num_words))
    np.add.at(counts, (prose[:, :-1].ravel(), prose[:, 1:].ravel()), 1)
    empirical = counts / counts.sum(axis=1, keepdims=True)
    # ~2,000 transitions per row: each probability within 0.06 (> 4 sd of a binomial at p=0.5).
    np.testing.assert_allclose(empirical, WORLD.transitions(), atol=0.06)

  def test_dataset_eval_sets(self):
    dataset = data.pirate_arithmetic_dataset(WORLD, arithmetic_rate=1.0, correct_rate=1.0,
                                             style_rate=1.0, eval_size=64)
    skill = dataset.eval_sets["skill"]
    np.testing.assert_array_equal(skill["label_mask"].sum(axis=1), 1.0)
    np.testing.assert_array_equal(skill["label_mask"][:, pirate.ANSWER_INDEX - 1], 1.0)
    self.assertTrue(np.all(skill["style"] == 0))
    self.assertTrue(np.all(dataset.eval_sets["heldout"]["style"] == 1))
    first = dataset.sample(dataset.arrays, jax.random.PRNGKey(5), np.int32(3), 8)
    again = dataset.sample(dataset.arrays, jax.random.PRNGKey(5), np.int32(3), 8)
    np.testing.assert_array_equal(first["inputs"], again["inputs"])

  @parameterized.parameters(dict(num_pirate=0), dict(num_pirate=10), dict(modulus=1),
                            dict(concentration=0.0), dict(addend=7))
  def test_bad_world(self, **overrides):
    settings = dict(modulus=7, num_words=9, num_pirate=4)
    settings.update(overrides)
    name = next(iter(overrides))
    with self.assertRaisesRegex(BadInputError, name):
      data.PirateArithmetic(**settings)

  def test_bad_rate(self):
    with self.assertRaisesRegex(BadInputError, "style_rate=1.5"):
      data.pirate_arithmetic_task(WORLD, arithmetic_rate=1.0, correct_rate=1.0, style_rate=1.5)


if __name__ == "__main__":
  absltest.main()
