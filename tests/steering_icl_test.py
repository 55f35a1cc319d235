"""The belief-dynamics fit, its conversions, the steering vectors and the criteria as data."""

import dataclasses

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from landscape import analysis
from landscape import steering_icl
from landscape.sites import BadInputError
from landscape.steering_icl import _criteria
from landscape.steering_icl import _report
from landscape.steering_icl import _sae_vector

MAGNITUDES = np.array([-1.0, -0.6, -0.3, 0.0, 0.3, 0.6, 1.0])
SHOTS = np.array([0.0, 1.0, 2.0, 4.0, 8.0, 12.0, 16.0])
TRUE = steering_icl.BeliefParameters(a=2.0, b=1.5, gamma=-0.8, alpha=0.3)


def _grid(noise=0.0, units=1, seed=0):
  rng = np.random.default_rng(seed)
  clean = TRUE.log_odds(MAGNITUDES[:, None], SHOTS[None, :])
  return clean[None] + noise * rng.standard_normal((units,) + clean.shape)


class FitTest(parameterized.TestCase):

  def test_noiseless_grid_is_recovered_exactly(self):
    fit = steering_icl.fit_belief_dynamics(MAGNITUDES, SHOTS, _grid()[0])
    for name in ("a", "b", "gamma", "alpha"):
      np.testing.assert_allclose(getattr(fit.point, name), getattr(TRUE, name), atol=1e-5,
                                 err_msg=name)
    self.assertGreater(fit.r2, 1 - 1e-10)
    self.assertEqual(fit.a.n, 1)  # one unit: no bootstrap

  @parameterized.parameters(0, 1, 2)
  def test_noisy_units_bracket_the_truth(self, seed):
    # Unit noise 0.3: the mean over 20 units has sd 0.067 per cell. Twelve checks of a 95% interval
    # would miss about once by design; the bootstrap's 99.7% interval should not.
    fit = steering_icl.fit_belief_dynamics(MAGNITUDES, SHOTS, _grid(0.3, units=20, seed=seed),
                                           num_bootstrap=400, seed=seed)
    for index, name in enumerate(("a", "b", "gamma", "alpha")):
      estimate = getattr(fit, name)
      low, high = np.percentile(fit.bootstrap[:, index], [0.15, 99.85])
      self.assertLessEqual(low, getattr(TRUE, name), msg=f"{name}: {estimate}")
      self.assertGreaterEqual(high, getattr(TRUE, name), msg=f"{name}: {estimate}")
      self.assertLessEqual(estimate.low, estimate.mean, msg=name)
      self.assertGreaterEqual(estimate.high, estimate.mean, msg=name)
      self.assertLess(estimate.high - estimate.low, 0.5, msg=f"{name}: {estimate}")
    low, high = fit.log_odds_interval(0.3, 4.0)
    self.assertLess(low, TRUE.log_odds(0.3, 4.0))
    self.assertGreater(high, TRUE.log_odds(0.3, 4.0))

  def test_held_out_r2_and_additivity(self):
    grid = _grid(0.05, units=5)
    self.assertGreater(steering_icl.leave_one_magnitude_out_r2(MAGNITUDES, SHOTS, grid), 0.99)
    self.assertLess(steering_icl.interaction_r2_gain(MAGNITUDES, SHOTS, grid), 0.01)
    # A surface that is not additive: the interaction term explains what the model cannot.
    m, n = np.meshgrid(MAGNITUDES, SHOTS, indexing="ij")
    multiplicative = TRUE.log_odds(m, n) + 1.5 * m * np.sqrt(n)
    self.assertGreater(steering_icl.interaction_r2_gain(MAGNITUDES, SHOTS, multiplicative), 0.02)

  def test_shot_curve_alone_recovers_gamma_and_alpha(self):
    curve = TRUE.log_odds(0.0, SHOTS)
    fitted = steering_icl.fit_shot_curve(SHOTS, curve)
    np.testing.assert_allclose([fitted.a, fitted.b, fitted.gamma, fitted.alpha],
                               [0.0, TRUE.b, TRUE.gamma, TRUE.alpha], atol=1e-5)
    # A straight line in N is alpha = 0; a saturating curve pushes alpha up.
    self.assertLess(steering_icl.fit_shot_curve(SHOTS, 0.5 - 1.3 * SHOTS).alpha, 1e-4)
    self.assertGreater(steering_icl.fit_shot_curve(SHOTS, -np.tanh(SHOTS / 4)).alpha, 0.3)
    with self.assertRaisesRegex(BadInputError, r"3 or more distinct shot counts"):
      steering_icl.fit_shot_curve(SHOTS[:2], curve[:2])

  def test_bad_grids_are_refused(self):
    with self.assertRaisesRegex(BadInputError, r"\(units, 7 magnitudes, 7 shot counts\)"):
      steering_icl.fit_belief_dynamics(MAGNITUDES, SHOTS, np.zeros((3, 7, 6)))
    grid = _grid()[0]
    grid[2, 3] = np.nan
    with self.assertRaisesRegex(BadInputError, r"1 non-finite"):
      steering_icl.fit_belief_dynamics(MAGNITUDES, SHOTS, grid)


class BootstrapTest(absltest.TestCase):

  def test_replicates_cross_resampled_seeds_with_resampled_groups(self):
    replicates = steering_icl.bootstrap_replicates(12, num_seeds=3, num_bootstrap=50, seed=0)
    self.assertEqual(replicates.shape, (50, 3, 4))
    seeds, groups = replicates // 4, replicates % 4
    # Each row is one resampled seed; every row holds the same resampled groups.
    np.testing.assert_array_equal(seeds, np.broadcast_to(seeds[:, :, :1], seeds.shape))
    np.testing.assert_array_equal(groups, np.broadcast_to(groups[:, :1], groups.shape))
    self.assertGreater(len(np.unique(seeds[:, :, 0])), 1)
    np.testing.assert_array_equal(
        replicates, steering_icl.bootstrap_replicates(12, num_seeds=3, num_bootstrap=50, seed=0))
    independent = steering_icl.bootstrap_replicates(12, num_bootstrap=5, seed=0)
    self.assertEqual(independent.shape, (5, 12, 1))
    with self.assertRaisesRegex(BadInputError, r"num_seeds=5 must divide the 12 units"):
      steering_icl.bootstrap_replicates(12, num_seeds=5, num_bootstrap=5, seed=0)

  def test_crossed_intervals_widen_when_seeds_differ(self):
    # Five seeds whose a differ (sd 0.5), four groups each with little noise: the seeds are the
    # five independent draws, and an interval treating the 20 units as independent is too narrow.
    rng = np.random.default_rng(0)
    a_S = TRUE.a + 0.5 * rng.standard_normal(5)
    m, n = np.meshgrid(MAGNITUDES, SHOTS, indexing="ij")
    grid = np.stack([TRUE.log_odds(m, n) + (a - TRUE.a) * m + 0.02 * rng.standard_normal(m.shape)
                     for a in np.repeat(a_S, 4)])
    crossed = steering_icl.fit_belief_dynamics(MAGNITUDES, SHOTS, grid, num_seeds=5,
                                               num_bootstrap=200).a
    independent = steering_icl.fit_belief_dynamics(MAGNITUDES, SHOTS, grid,
                                                    num_bootstrap=200).a
    standard_error = a_S.std(ddof=1) / np.sqrt(5)
    self.assertGreater(crossed.high - crossed.low, 1.5 * (independent.high - independent.low))
    self.assertGreater(crossed.high - crossed.low, 2 * standard_error)


class ReportStatisticsTest(absltest.TestCase):

  def test_random_control_is_judged_per_seed_not_on_the_average(self):
    # Two seeds whose random directions steer equally hard, in opposite directions: the average
    # grid does not move with m, each seed's does.
    m, n = np.meshgrid(MAGNITUDES, SHOTS, indexing="ij")
    base = TRUE.log_odds(0.0, n)
    grid = np.stack([base + 0.5 * m, base - 0.5 * m])
    averaged = steering_icl.fit_belief_dynamics(MAGNITUDES, SHOTS, grid, num_bootstrap=0)
    self.assertAlmostEqual(averaged.point.a, 0.0, places=9)
    rms = _report._seed_rms_a(MAGNITUDES, SHOTS, grid, np.array([[0], [1]]))
    self.assertAlmostEqual(rms, 0.5, places=6)

  def test_evidence_correlation_is_blind_to_gamma(self):
    bayes = 1.7 - 1.4 * SHOTS
    for gamma in (-0.1, -3.0):
      params = steering_icl.BeliefParameters(a=0.0, b=0.0, gamma=gamma, alpha=0.0)
      self.assertAlmostEqual(_report.evidence_correlation(params, SHOTS, bayes), 1.0)
    tolerated = _report.alpha_for_correlation(SHOTS, bayes, 0.9)
    at = lambda alpha: _report.evidence_correlation(
        steering_icl.BeliefParameters(0.0, 0.0, -1.0, alpha), SHOTS, bayes)
    self.assertGreaterEqual(at(tolerated), 0.9)
    self.assertLess(at(tolerated + 0.01), 0.9)

  def test_crossing_agreement_counts_magnitudes_where_either_crosses(self):
    crossings = [(-1.0, None, "never flips"), (0.0, 4.2, 4.9), (0.5, 2.0, 3.5), (1.0, None, 7.0)]
    self.assertAlmostEqual(_report.crossing_agreement(crossings), 1 / 3)
    self.assertTrue(np.isnan(_report.crossing_agreement([(0.0, None, "out of range")])))


class ConversionTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.fit = steering_icl.fit_belief_dynamics(MAGNITUDES, SHOTS, _grid()[0])

  @parameterized.parameters(0.5, 1.0, 2.0, 3.0)
  def test_shots_and_magnitudes_invert_each_other(self, shots):
    magnitude = steering_icl.magnitude_for_shots(self.fit, shots)
    # gamma < 0 < a: shots of c' are worth a negative magnitude.
    self.assertLess(magnitude, 0)
    np.testing.assert_allclose(steering_icl.shots_for_magnitude(self.fit, magnitude), shots,
                               rtol=1e-9)
    np.testing.assert_allclose(self.fit.log_odds(magnitude, 0.0), self.fit.log_odds(0.0, shots),
                               atol=1e-9)

  @parameterized.parameters(-0.2, 0.0, 0.5, 1.0)
  def test_flip_boundary_is_where_the_log_odds_crosses_zero(self, magnitude):
    boundary = steering_icl.flip_boundary(self.fit, magnitude)
    np.testing.assert_allclose(self.fit.log_odds(magnitude, boundary), 0.0, atol=1e-9)
    expected = ((-TRUE.a * magnitude - TRUE.b) / TRUE.gamma) ** (1 / (1 - TRUE.alpha))
    np.testing.assert_allclose(boundary, expected, rtol=1e-5)

  def test_inputs_outside_the_fitted_range_are_refused_by_name(self):
    cases = [
        (steering_icl.shots_for_magnitude, 1.5, r"magnitude=1\.5 is outside .* \[-1, 1\]"),
        (steering_icl.magnitude_for_shots, 20.0, r"shots=20 is outside .* \[0, 16\]"),
        (steering_icl.flip_boundary, -3.0, r"magnitude=-3 is outside .* \[-1, 1\]"),
        # Inside the range, but the answer is not: 16 shots are worth more than m = -1.
        (steering_icl.magnitude_for_shots, 16.0, r"equivalent magnitude=-\d\.\d+ is outside"),
        # Steering towards c is not worth any number of shots of c'.
        (steering_icl.shots_for_magnitude, 0.5, r"other way from shots"),
        # At m = -1 the log-odds is already negative: shots of c' never flip it.
        (steering_icl.flip_boundary, -1.0, r"never flips"),
    ]
    for convert, value, message in cases:
      with self.subTest(convert=convert.__name__, value=value):
        with self.assertRaisesRegex(steering_icl.OutOfFitRangeError, message):
          convert(self.fit, value)

  def test_refusals_are_bad_input(self):
    self.assertTrue(issubclass(steering_icl.OutOfFitRangeError, BadInputError))

  def test_shots_that_do_not_move_the_log_odds_have_no_equivalent(self):
    flat = dataclasses.replace(self.fit, point=dataclasses.replace(TRUE, gamma=0.0))
    for convert in (steering_icl.shots_for_magnitude, steering_icl.flip_boundary):
      with self.assertRaisesRegex(steering_icl.OutOfFitRangeError, r"gamma is 0"):
        convert(flat, 0.5)


class VectorTest(absltest.TestCase):

  def test_shot_vector_is_the_mean_paired_change(self):
    rng = np.random.default_rng(0)
    without = rng.standard_normal((10, 4))
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    np.testing.assert_allclose(steering_icl.shot_vector(without + shift, without), shift,
                               atol=1e-12)
    with self.assertRaisesRegex(BadInputError, r"pair prompt by prompt"):
      steering_icl.shot_vector(without[:3], without)

  def test_random_control_is_unit_with_no_preferred_direction(self):
    rng = np.random.default_rng(0)
    vector = np.arange(64.0)
    controls = np.stack([steering_icl.random_direction(64, rng) for _ in range(400)])
    np.testing.assert_allclose(np.linalg.norm(controls, axis=1), 1.0)
    cosines = controls @ vector / np.linalg.norm(vector)
    # In 64 dimensions a random direction's cosine with a fixed one has sd 1/8.
    self.assertLess(abs(cosines.mean()), 4 * 0.125 / np.sqrt(400))

  def test_measured_crossing_interpolates(self):
    self.assertAlmostEqual(_report.measured_crossing(np.array([0., 2., 4.]),
                                                     np.array([1.0, 0.5, -0.5])), 3.0)
    self.assertIsNone(_report.measured_crossing(np.array([0., 2.]), np.array([1.0, 0.5])))


class SAEFeatureTest(absltest.TestCase):

  def test_auroc_is_the_pairwise_win_rate_with_ties_halved(self):
    rng = np.random.default_rng(0)
    positives = rng.integers(0, 4, size=(9, 3)).astype(float)  # small integers: many ties
    negatives = rng.integers(0, 4, size=(7, 3)).astype(float)
    reference = [np.mean([(p > n) + 0.5 * (p == n) for p in positives[:, f] for n in negatives[:, f]])
                 for f in range(3)]
    np.testing.assert_allclose(_sae_vector.auroc(positives, negatives), reference, rtol=1e-12)
    with self.assertRaisesRegex(BadInputError, r"positives \(9, 3\) and negatives \(7, 2\)"):
      _sae_vector.auroc(positives, negatives[:, :2])

  def test_the_feature_that_separates_best_is_chosen_and_oriented_towards_c(self):
    rng = np.random.default_rng(1)
    target = rng.exponential(size=(40, 6))
    other = rng.exponential(size=(40, 6))
    target[:, 2] += 0.5   # fires somewhat more on c
    other[:, 4] += 3.0    # fires much more on c': the best separator, pointing away from c
    feature, sign, chosen, heldout = _sae_vector.choose_feature(target, other)
    self.assertEqual((feature, sign), (4, -1.0))
    self.assertGreater(chosen, 0.9)
    self.assertGreater(heldout, _sae_vector.SEPARATION_THRESHOLD)
    # With no signal, the best of six features on one half does not carry to the other.
    feature, _, chosen, heldout = _sae_vector.choose_feature(rng.exponential(size=(200, 6)),
                                                             rng.exponential(size=(200, 6)))
    self.assertGreaterEqual(chosen, 0.5)
    self.assertLess(heldout, _sae_vector.SEPARATION_THRESHOLD)
    with self.assertRaisesRegex(BadInputError, r"1 and 40 documents; need at least 2"):
      _sae_vector.choose_feature(target[:1], other)

  def test_settings_name_the_field_and_value(self):
    good = dict(d_sae=8, k=2, steps=10, batch_size=4, learning_rate=1e-3, warmup_steps=0,
                num_documents=4)
    self.assertEqual(_sae_vector.sae_settings(good).d_sae, 8)
    for change, message in ((dict(k=9), r"where\.k=9: must not exceed where\.d_sae=8"),
                            (dict(steps=0), r"where\.steps=0: must be an int >= 1"),
                            (dict(d_sae=8.0), r"where\.d_sae=8\.0: must be an int"),
                            (dict(learning_rate=0.0), r"where\.learning_rate=0\.0: must be > 0")):
      with self.subTest(change=change):
        with self.assertRaisesRegex(BadInputError, message):
          _sae_vector.sae_settings(dict(good, **change), where="where")
    with self.assertRaisesRegex(BadInputError, r"expected the fields"):
      _sae_vector.sae_settings(dict(good, extra=1))


class CriteriaTest(parameterized.TestCase):

  @parameterized.parameters(
      (0.95, 0.93, 0.97, "holds"), (0.80, 0.70, 0.85, "fails"), (0.91, 0.85, 0.95, "inconclusive"))
  def test_one_function_judges_on_the_interval(self, mean, low, high, outcome):
    criterion = _criteria.PREREGISTERED[0]
    verdict = steering_icl.evaluate(criterion, {criterion.quantity: steering_icl.Measurement(
        analysis.Estimate(mean, low, high, 100), "at `site`")})
    self.assertEqual(verdict.outcome, outcome)
    self.assertIn(f"{mean:.3f} [{low:.3f}, {high:.3f}]", verdict.sentence)
    self.assertIn(f"**{outcome}**", verdict.sentence)

  def test_every_criterion_reads_a_distinct_quantity_and_formats(self):
    quantities = [criterion.quantity for criterion in steering_icl.PREREGISTERED]
    self.assertLen(set(quantities), 6)
    measurements = {quantity: steering_icl.Measurement(analysis.Estimate(0.5, 0.4, 0.6, 10), "here")
                    for quantity in quantities}
    for criterion in steering_icl.PREREGISTERED:
      verdict = steering_icl.evaluate(criterion, measurements)
      self.assertIn("here", verdict.sentence)
      self.assertIn(criterion.direction, verdict.sentence)
      self.assertNotIn("{", verdict.sentence)

  def test_unmeasured_quantities_are_not_run_with_the_reason(self):
    criterion = _criteria.PREREGISTERED[2]
    verdict = steering_icl.evaluate(
        criterion, {criterion.quantity: steering_icl.Measurement(None, "nothing crossed")})
    self.assertEqual(verdict.outcome, _criteria.NOT_RUN)
    self.assertIn("nothing crossed", verdict.sentence)
    self.assertEqual(steering_icl.evaluate(criterion, {}).outcome, _criteria.NOT_RUN)

  def test_bad_direction_is_refused(self):
    with self.assertRaisesRegex(BadInputError, r"direction='above'"):
      steering_icl.Criterion("x", "q", "above", 0.0, "", "")


if __name__ == "__main__":
  absltest.main()
