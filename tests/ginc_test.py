"""GINC documents: the forward algorithm against brute-force enumeration, and the samplers' laws."""

import itertools

import jax
import numpy as np
from absl.testing import absltest

from landscape import data
from landscape.sites import BadInputError


def _tiny_mixture(seed=0, num_concepts=2, num_states=3, vocab_size=3):
  """A random mixture with dense (not deterministic) emissions, so enumeration is non-trivial."""
  rng = np.random.default_rng(seed)
  rows = lambda *shape: rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
  return data.HMMMixture(prior_C=rng.dirichlet(np.ones(num_concepts)),
                         start_CxH=rows(num_concepts, num_states),
                         transition_CxHxH=rows(num_concepts, num_states, num_states),
                         emission_HxV=rows(num_states, vocab_size))


def _enumerated_likelihood(mixture, tokens, concept):
  """p(x_1..x_T | c), summing the joint over every hidden path (H^T of them)."""
  total = 0.0
  for path in itertools.product(range(mixture.num_states), repeat=len(tokens)):
    p = mixture.start_CxH[concept, path[0]] * mixture.emission_HxV[path[0], tokens[0]]
    for t in range(1, len(tokens)):
      p *= (mixture.transition_CxHxH[concept, path[t - 1], path[t]]
            * mixture.emission_HxV[path[t], tokens[t]])
    total += p
  return total


class ForwardAlgorithmTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.mixture = _tiny_mixture()
    self.tokens = np.array([[0, 2, 1, 1, 0], [2, 2, 2, 0, 1], [1, 0, 2, 1, 2]])

  def test_prefix_likelihoods_match_enumeration(self):
    log_likelihood = data.concept_log_likelihoods(self.mixture, self.tokens)
    for b, t, c in itertools.product(range(3), range(5), range(2)):
      expected = _enumerated_likelihood(self.mixture, self.tokens[b, :t + 1], c)
      np.testing.assert_allclose(np.exp(log_likelihood[b, t, c]), expected, rtol=1e-12)

  def test_posterior_is_bayes_rule_over_enumerated_likelihoods(self):
    posterior = np.exp(data.concept_log_posterior(self.mixture, self.tokens))
    for b in range(3):
      joint = np.array([self.mixture.prior_C[c] * _enumerated_likelihood(self.mixture, self.tokens[b], c)
                        for c in range(2)])
      np.testing.assert_allclose(posterior[b, -1], joint / joint.sum(), rtol=1e-12)

  def test_predictive_is_the_ratio_of_enumerated_likelihoods(self):
    mixture_pred, per_concept = data.predictive(self.mixture, self.tokens)
    prefix = self.tokens[0, :3]
    for c in range(2):
      for v in range(3):
        extended = np.append(prefix, v)
        expected = (_enumerated_likelihood(self.mixture, extended, c)
                    / _enumerated_likelihood(self.mixture, prefix, c))
        np.testing.assert_allclose(per_concept[0, 2, c, v], expected, rtol=1e-12)
    joint = lambda seq: sum(self.mixture.prior_C[c] * _enumerated_likelihood(self.mixture, seq, c)
                            for c in range(2))
    for v in range(3):
      np.testing.assert_allclose(mixture_pred[0, 2, v], joint(np.append(prefix, v)) / joint(prefix),
                                 rtol=1e-12)

  def test_bayes_optimal_loss_is_the_enumerated_cross_entropy(self):
    joint = lambda seq: sum(self.mixture.prior_C[c] * _enumerated_likelihood(self.mixture, seq, c)
                            for c in range(2))
    expected = -np.mean([np.log(joint(row[:t + 1]) / joint(row[:t]))
                         for row in self.tokens for t in range(1, 5)])
    np.testing.assert_allclose(data.bayes_optimal_loss(self.mixture, self.tokens), expected,
                               rtol=1e-12)

  def test_long_sequences_stay_finite(self):
    mixture = data.ginc_mixture(seed=3)
    tokens = data.sample_hmm(mixture, np.random.default_rng(0), np.zeros(2, int), 2000)
    posterior = data.concept_log_posterior(mixture, tokens)
    self.assertTrue(np.all(np.isfinite(data.concept_log_likelihoods(mixture, tokens))))
    np.testing.assert_allclose(np.exp(posterior).sum(-1), 1.0, rtol=1e-12)
    # 2000 tokens of concept 0 leave no doubt about it.
    self.assertGreater(np.exp(posterior[:, -1, 0]).min(), 0.999)

  def test_out_of_vocabulary_tokens_are_refused(self):
    with self.assertRaisesRegex(BadInputError, r"\[0, 3\)"):
      data.concept_log_posterior(self.mixture, np.array([[0, 3]]))


class MixtureTest(absltest.TestCase):

  def test_ginc_structure(self):
    mixture = data.ginc_mixture(num_concepts=3, num_values=2, num_slots=3, vocab_size=8, seed=1)
    self.assertEqual(mixture.num_states, 6)
    # Deterministic emissions; slot 0 emits the delimiter.
    np.testing.assert_array_equal(mixture.emission_HxV.max(-1), 1.0)
    np.testing.assert_array_equal(mixture.emission_HxV[::3, data.GINC_DELIMITER], 1.0)
    # Smoothing keeps every transition positive.
    self.assertGreater(mixture.transition_CxHxH.min(), 0.0)
    self.assertFalse(np.allclose(mixture.transition_CxHxH[0], mixture.transition_CxHxH[1]))

  def test_bad_rows_are_refused(self):
    mixture = _tiny_mixture()
    with self.assertRaisesRegex(BadInputError, r"start_CxH"):
      data.HMMMixture(mixture.prior_C, mixture.start_CxH * 2, mixture.transition_CxHxH,
                      mixture.emission_HxV)
    with self.assertRaisesRegex(BadInputError, r"smoothing=1.5"):
      data.ginc_mixture(smoothing=1.5)


class SamplerTest(absltest.TestCase):

  def test_host_and_device_samplers_follow_the_first_token_law(self):
    mixture = data.ginc_mixture(num_concepts=2, num_values=2, num_slots=3, vocab_size=6, seed=2)
    first_token = mixture.prior_C @ mixture.start_CxH @ mixture.emission_HxV
    host = data.sample_hmm(mixture, np.random.default_rng(0), np.arange(4000) % 2, 1)[:, 0]
    batch = jax.jit(data.ginc_task(mixture, 3), static_argnums=1)(jax.random.PRNGKey(0), 4000)
    device = np.asarray(batch["inputs"][:, 0])
    for tokens in (host, device):
      frequencies = np.bincount(tokens, minlength=6) / 4000
      # Four binomial standard errors at n = 4000 (at most 0.032).
      np.testing.assert_allclose(frequencies, first_token, atol=4 * np.sqrt(0.25 / 4000))
    np.testing.assert_array_equal(batch["labels"][:, :-1], batch["inputs"][:, 1:])

  def test_documents_identify_their_concept(self):
    mixture = data.ginc_mixture(num_concepts=3, seed=0)
    batch = data.ginc_task(mixture, 63)(jax.random.PRNGKey(1), 64)
    tokens = np.concatenate([np.asarray(batch["inputs"]), np.asarray(batch["labels"][:, -1:])], 1)
    posterior = data.concept_log_posterior(mixture, tokens)[:, -1]
    self.assertGreater(np.mean(posterior.argmax(-1) == np.asarray(batch["concept"])), 0.9)

  def test_dataset_reports_the_bayes_optimal_loss(self):
    mixture = data.ginc_mixture(num_concepts=2, seed=0)
    dataset = data.ginc_dataset(mixture, 15, eval_size=32)
    loss = dataset.info["bayes_optimal_loss"]
    self.assertTrue(0.0 < loss < np.log(mixture.vocab_size))


if __name__ == "__main__":
  absltest.main()
