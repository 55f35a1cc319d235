"""Concept attribution, piece by piece: the attribution on a small GPT against float64 NumPy, the
group shares' sum, the gain transform and the feature spans it reads as data, the jobs' grids, the
criteria (pre-registered and post hoc) judged on planted results, and the gpu preset's config."""

import types

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import concept_attribution as experiment_config
from landscape import analysis
from landscape import concept_attribution
from landscape import sae as sae_lib
from landscape import transforms
from landscape.concept_attribution import _arms
from landscape.concept_attribution import _criteria
from landscape.concept_attribution import _measures
from landscape.concept_attribution import _results
from landscape.concept_attribution import _setting
from landscape.concept_attribution import scale_along_by
from landscape.training import ConfigError

SITE = "blocks.0.resid_post"


def _small_setting(d_sae=24, seed=0):
  config = experiment_config.get_config("smoke")
  world = _setting.make_world(config)
  model = _setting.make_model(config, world)
  params = model.init(jax.random.PRNGKey(seed))
  sae = sae_lib.init_sae(jax.random.PRNGKey(seed + 1), "topk", config.model.d_model, d_sae, k=4)
  return types.SimpleNamespace(model=model, sae=sae, site=SITE), params


def _writer_vectors(update):
  """Every vector the writes of blocks.0.resid_post put into the stream, float64: the rows of the
  attention and MLP output kernels (their output axis) and their biases."""
  block = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf, np.float64), update["blocks"]["0"])
  attention, mlp = block["attention"]["out"], block["mlp"]["out"]
  return np.concatenate([attention["kernel"], attention["bias"][None], mlp["kernel"],
                         mlp["bias"][None]])


def _span_and_update(setting, params, features, *, seed: int):
  """The span of ``features``' decoder rows at the site's writers, and a random params-shaped
  update (float32 normal draws of ``seed``)."""
  directions = sae_lib.feature_directions(setting.sae, setting.model.site_links, site=SITE,
                                          features=features, roles=("writes",))
  rng = np.random.default_rng(seed)
  update = jax.tree_util.tree_map(lambda leaf: jnp.asarray(rng.normal(size=leaf.shape),
                                                           jnp.float32), params)
  return directions, update

class AttributionTest(absltest.TestCase):

  def test_matches_a_float64_reference_on_a_small_gpt(self):
    setting, params = _small_setting()
    rng = np.random.default_rng(0)
    update = jax.tree_util.tree_map(lambda leaf: jnp.asarray(rng.normal(size=leaf.shape),
                                                             jnp.float32), params)
    tx = transforms.attribute(_measures.attribution_directions(setting))
    _, state = jax.jit(tx.update)(update, tx.init(params))
    u = _writer_vectors(update)
    rows = np.asarray(setting.sae.W_dec, np.float64)
    squared = np.sum(np.square(u @ rows.T), axis=0)
    share = squared / (np.sum(np.square(u)) * np.sum(np.square(rows), axis=1))
    # float32 HIGHEST matmuls over a Gram matrix of ~80 vectors of width 16: ~1e-6 relative.
    np.testing.assert_allclose(state.metrics[f"{SITE}/magnitude"], np.sqrt(squared), rtol=1e-4)
    np.testing.assert_allclose(state.metrics[f"{SITE}/share"], share, rtol=1e-4)

  def test_group_shares_sum_as_documented(self):
    setting, params = _small_setting(d_sae=40)
    rng = np.random.default_rng(1)
    update = jax.tree_util.tree_map(lambda leaf: jnp.asarray(rng.normal(size=leaf.shape),
                                                             jnp.float32), params)
    tx = transforms.attribute(_measures.attribution_directions(setting))
    _, state = tx.update(update, tx.init(params))
    share = np.asarray(state.metrics[f"{SITE}/share"])
    masks = {"style": np.arange(40) < 5, "skill": (np.arange(40) >= 5) & (np.arange(40) < 12)}
    masks["other"] = ~(masks["style"] | masks["skill"])
    groups = _measures.group_shares(share, masks)
    u = _writer_vectors(update)
    unit = np.asarray(setting.sae.W_dec, np.float64)
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    documented = np.sum(np.square(u @ unit.T)) / np.sum(np.square(u))
    np.testing.assert_allclose(sum(groups.values()), documented, rtol=1e-4)
    self.assertGreater(documented, 1.0)  # 40 rows in 16 dimensions: overcomplete
    # An orthonormal dictionary: the shares of a partition sum to 1, the total share.
    orthonormal = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    setting.sae = setting.sae.replace(W_dec=jnp.asarray(orthonormal, jnp.float32))
    tx = transforms.attribute(_measures.attribution_directions(setting))
    _, state = tx.update(update, tx.init(params))
    halves = {"first": np.arange(16) < 7, "rest": np.arange(16) >= 7}
    total = sum(_measures.group_shares(state.metrics[f"{SITE}/share"], halves).values())
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)
    np.testing.assert_allclose(state.metrics[f"{SITE}/total_share"], 1.0, rtol=1e-5)

  def test_scale_along_by_reads_its_gain(self):
    setting, params = _small_setting()
    directions, update = _span_and_update(setting, params, np.array([1, 4, 7]), seed=2)
    for gain in (0.0, -1.0, 2.5):
      by_arg = scale_along_by(directions, "gain")
      out, _ = jax.jit(by_arg.update)(update, by_arg.init(params), None,
                                      gain=jnp.asarray(gain, jnp.float32))
      fixed = transforms.scale_along(directions, gain)
      expected, _ = fixed.update(update, fixed.init(params))
      jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), out,
                             expected)

  def test_scale_along_by_at_gains_one_and_zero(self):
    setting, params = _small_setting()
    chosen = np.array([1, 4, 7])
    directions, update = _span_and_update(setting, params, chosen, seed=3)
    by_arg = scale_along_by(directions, "gain")
    apply = jax.jit(by_arg.update)
    bits = lambda tree: [np.asarray(leaf).view(np.uint32)
                         for leaf in jax.tree_util.tree_leaves(tree)]
    # Gain 1: the update itself, bit for bit (no signed zeros in it; -0.0 would come back +0.0).
    kept, _ = apply(update, by_arg.init(params), None, gain=jnp.ones((), jnp.float32))
    for out, given in zip(bits(kept), bits(update)):
      np.testing.assert_array_equal(out, given)
    # Gain 0: project_out's result bit for bit, and u (I - P) of the float64 span projector P.
    removed, _ = apply(update, by_arg.init(params), None, gain=jnp.zeros((), jnp.float32))
    project_out = transforms.project_out(directions)
    expected, _ = project_out.update(update, project_out.init(params))
    for out, given in zip(bits(removed), bits(expected)):
      np.testing.assert_array_equal(out, given)
    rows = np.asarray(setting.sae.W_dec, np.float64)[chosen]
    basis = np.linalg.qr(rows.T)[0].T                       # (3, D) orthonormal, float64
    u = _writer_vectors(update)
    reference = u - (u @ basis.T) @ basis
    # ~80 vectors of width 16 in float32 HIGHEST: the residual along the span ~1e-7 of ||u||.
    np.testing.assert_allclose(_writer_vectors(removed), reference, atol=1e-5)
    self.assertLess(np.linalg.norm(_writer_vectors(removed) @ basis.T), 1e-5 * np.linalg.norm(u))

  def test_gain_scales_the_groups_attribution_by_its_size(self):
    """scale_along_by(g) before attribute: each chosen feature's magnitude becomes |g| times the
    magnitude without gains (P d_k = d_k), so the arms attribute the update they apply."""
    setting, params = _small_setting()
    chosen = np.array([2, 5, 11])
    directions, update = _span_and_update(setting, params, chosen, seed=4)
    attribution = transforms.attribute(_measures.attribution_directions(setting))
    _, before = attribution.update(update, attribution.init(params))
    before = np.asarray(before.metrics[f"{SITE}/magnitude"], np.float64)
    norm_squared = np.sum(np.square(_writer_vectors(update)))
    for gain in (0.0, -1.0, 3.0):
      chain = optax.chain(scale_along_by(directions, "gain"), attribution)
      _, state = jax.jit(chain.update)(update, chain.init(params), None,
                                       gain=jnp.asarray(gain, jnp.float32))
      after = np.asarray(state[1].metrics[f"{SITE}/magnitude"], np.float64)
      # Squared magnitudes: d^T G d through the float32 Gram matrix G = U^T U (24 rows > 16
      # dimensions) errs by ~1e-7 ||U||^2 absolute, so a magnitude near 0 reads ~3e-4 ||U||.
      np.testing.assert_allclose(np.square(after[chosen]), gain**2 * np.square(before[chosen]),
                                 rtol=1e-4, atol=1e-6 * (1 + gain**2) * norm_squared)

  def test_scale_along_by_names_a_missing_gain(self):
    setting, params = _small_setting()
    directions = sae_lib.feature_directions(setting.sae, setting.model.site_links, site=SITE,
                                            features=np.array([0]), roles=("writes",))
    by_arg = scale_along_by(directions, "style_gain")
    with self.assertRaisesRegex(transforms.DirectionsError, "'style_gain'.*'skill_gain'"):
      by_arg.update(params, by_arg.init(params), None, skill_gain=1.0)

  def test_feature_spans_are_each_sets_span_and_picked_by_index(self):
    """The gain jobs' spans are data: the stacked bases equal each set's float64 span, and a
    gain whose span arrives through its extra arg (picked by index, as `_feature_gains` does)
    computes what `scale_along` with that set's span fixed computes."""
    setting, params = _small_setting()
    chosen = {"style": [1, 4, 7], "skill": [0, 2, 9], "random": [5, 11, 13],
              "by_activation": [3, 4, 20]}
    setting.groups = types.SimpleNamespace(**{name: np.asarray(chosen[name])
                                              for name in _setting.FEATURE_SETS})
    config = experiment_config.get_config("smoke")
    spans = _arms.feature_spans(setting, config)
    self.assertEqual(spans.bases_GxRxD.shape, (4, 3, 16))
    rows = np.asarray(setting.sae.W_dec, np.float64)
    for index, name in enumerate(_setting.FEATURE_SETS):
      basis = np.asarray(spans.bases_GxRxD[index], np.float64)
      reference = np.linalg.qr(rows[chosen[name]].T)[0]          # (D, 3) orthonormal, float64
      # float32 storage of a float64 SVD basis: orthonormal to ~1e-7; the same projector.
      np.testing.assert_allclose(basis @ basis.T, np.eye(3), atol=1e-6)
      np.testing.assert_allclose(basis.T @ basis, reference @ reference.T, atol=1e-6)
    rng = np.random.default_rng(5)
    update = jax.tree_util.tree_map(lambda leaf: jnp.asarray(rng.normal(size=leaf.shape),
                                                             jnp.float32), params)
    held = _arms.feature_span(setting, chosen["style"], config, extra_arg="span")
    by_index = scale_along_by(held, "gain")
    apply = jax.jit(lambda update, index, gain: by_index.update(
        update, by_index.init(params), None, gain=gain,
        span={SITE: spans.bases_GxRxD[index]})[0])
    for index, name in enumerate(_setting.FEATURE_SETS):
      fixed = transforms.scale_along(_arms.feature_span(setting, chosen[name], config), -1.0)
      expected, _ = fixed.update(update, fixed.init(params))
      got = apply(update, jnp.asarray(index, jnp.int32), jnp.asarray(-1.0, jnp.float32))
      jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), got,
                             expected)

  def test_rank_correlation(self):
    self.assertAlmostEqual(_measures.rank_correlation([1, 2, 3, 4], [10, 20, 25, 40]), 1.0)
    self.assertAlmostEqual(_measures.rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]), -1.0)
    self.assertEqual(_measures.rank_correlation([1, 1, 1], [1, 2, 3]), 0.0)


def _result(arm, *, style=None, skill=None, point=None, magnitude=None, skill_curve=None,
            steps=100, seeds=(0, 1, 2, 3, 4)):
  seeds = list(seeds)
  final = {}
  if style is not None:
    final[_results.STYLE_RATE] = np.asarray(style, np.float64)
  if skill is not None:
    final[_results.SKILL_ACCURACY] = np.asarray(skill, np.float64)
  curves = {}
  if skill_curve is not None:
    curves[_results.SKILL_ACCURACY] = skill_curve
  attribution = {} if magnitude is None else {"magnitude": magnitude}
  return _results.ArmResult(arm=arm, family="baseline", point=point or {}, seeds=seeds,
                            steps=steps, final=final, curves=curves, attribution=attribution,
                            mean_code=np.zeros((1, len(seeds), 1)))


def _criterion(name):
  return next(c for c in _criteria.PREREGISTERED if c.name.startswith(name))


class CriteriaTest(absltest.TestCase):

  def test_style_on_top_counts_seeds(self):
    num_features, seeds = 10, 5
    masks = {"style": np.arange(num_features) < 3}
    steps = np.array([10, 20, 60])
    magnitude = np.ones((3, seeds, num_features))
    magnitude[:2, :4, :3] = 5.0          # seeds 0-3: the style features lead by step 50
    magnitude[:2, 4, 5:] = 5.0           # seed 4: other features lead by step 50,
    magnitude[2, 4, :3] = 50.0           # the style features only after it
    plain = _result("plain", magnitude=(steps, magnitude))
    verdict = _criteria.evaluate(_criterion("1."), _criteria.Evidence([plain], masks, 0.9))
    self.assertEqual(verdict.outcome, analysis.HOLDS)
    self.assertEqual(verdict.numbers["style_in_top"], [3, 3, 3, 3, 0])
    magnitude[:2, 3, 5:] = 9.0           # now only 3 of 5 seeds
    verdict = _criteria.evaluate(_criterion("1."), _criteria.Evidence([plain], masks, 0.9))
    self.assertEqual(verdict.outcome, analysis.FAILS)

  def test_suppression_needs_both_parts(self):
    plain = _result("plain", style=[0.9, 0.8, 0.85, 0.95, 0.9], skill=[0.9] * 5)
    halved = _result("suppress", point={"style_gain": 0.0}, style=[0.1, 0.2, 0.15, 0.1, 0.2],
                     skill=[0.9, 0.905, 0.895, 0.9, 0.9])
    evidence = _criteria.Evidence([plain, halved], {}, 0.9)
    self.assertEqual(_criteria.evaluate(_criterion("2."), evidence).outcome, analysis.HOLDS)
    worse_skill = _result("suppress", point={"style_gain": 0.0},
                          style=[0.1, 0.2, 0.15, 0.1, 0.2], skill=[0.5, 0.52, 0.48, 0.5, 0.5])
    evidence = _criteria.Evidence([plain, worse_skill], {}, 0.9)
    verdict = _criteria.evaluate(_criterion("2."), evidence)
    self.assertEqual(verdict.outcome, analysis.FAILS)
    self.assertIn("-0.400", verdict.sentence)

  def test_not_run(self):
    evidence = _criteria.Evidence([_result("plain", style=[0.5] * 5)], {}, 0.9)
    verdict = _criteria.evaluate(_criterion("5."), evidence)
    self.assertEqual(verdict.outcome, _criteria.NOT_RUN)
    self.assertIn("suppress_long", verdict.sentence)

  def test_steps_to_threshold_censors(self):
    steps = np.array([0, 20, 40, 60])
    values = np.array([[0.1, 0.1], [0.5, 0.95], [0.92, 0.97], [0.93, 0.99]])
    result = _result("plain", skill_curve=(steps, values), seeds=(0, 1), steps=60)
    np.testing.assert_array_equal(_criteria.steps_to_threshold(result, 0.9), [40, 20])
    np.testing.assert_array_equal(_criteria.steps_to_threshold(result, 0.995), [80, 80])


  def test_post_hoc_margin_variant_judges_the_margin_gained_over_the_base(self):
    # The rate saturates (1.0 everywhere: the pre-registered criterion 2 fails), while the margin
    # gained over the base (step 0: -2) is 4 for plain and 1 for suppress: less than half.
    steps = np.array([0, 50, 100])

    def margins(final):
      start = np.full(5, -2.0)
      return (steps, np.stack([start, (start + final) / 2, final]))

    plain = _result("plain", style=[1.0] * 5, skill=[0.9] * 5)
    plain.final[_results.STYLE_MARGIN] = np.array([2.0, 2.1, 1.9, 2.0, 2.0])
    plain.curves[_results.STYLE_MARGIN] = margins(plain.final[_results.STYLE_MARGIN])
    suppress = _result("suppress", point={"style_gain": 0.0}, style=[1.0] * 5, skill=[0.9] * 5)
    suppress.final[_results.STYLE_MARGIN] = np.array([-1.0, -0.9, -1.1, -1.0, -1.0])
    suppress.curves[_results.STYLE_MARGIN] = margins(suppress.final[_results.STYLE_MARGIN])
    evidence = _criteria.Evidence([plain, suppress], {}, 0.9)
    self.assertEqual(_criteria.evaluate(_criterion("2."), evidence).outcome, analysis.FAILS)
    on_margin = next(c for c in concept_attribution.POST_HOC if c.name.startswith("2m."))
    self.assertEqual(on_margin.bounds, _criterion("2.").bounds)  # the pre-registered bounds
    self.assertTrue(on_margin.post_hoc)
    verdict = _criteria.evaluate(on_margin, evidence)
    self.assertEqual(verdict.outcome, analysis.HOLDS)
    # suppress gained 1.0, plain 4.0: 1.0 - 0.5 x 4.0 = -1.0 per seed.
    self.assertAlmostEqual(verdict.numbers["style_minus_bound"]["mean"], -1.0)
    np.testing.assert_allclose(_criteria.acquired_style(plain, _results.STYLE_MARGIN),
                               [4.0, 4.1, 3.9, 4.0, 4.0])
    np.testing.assert_array_equal(_criteria.acquired_style(plain, _results.STYLE_RATE), [1.0] * 5)
    self.assertEqual([c.name.split(".")[0] for c in concept_attribution.POST_HOC],
                     ["2m", "3m", "5m"])


class JobsTest(absltest.TestCase):

  def test_every_arm_point_is_one_distinct_point_of_its_job(self):
    config = experiment_config.get_config("")
    for job in concept_attribution.JOB_REGISTRY:
      grid = _arms.job_grid(job, config)
      keys = [tuple(sorted(point.items())) for point in grid]
      self.assertLen(set(keys), len(keys), job)
      runs = [{"seed": seed, **point} for point in grid for seed in (0, 1)]
      claimed = []
      for arm in _arms.job_arms(job):
        points = _arms.runs_of(runs, arm, config)
        self.assertEqual([point for point, _ in points],
                         concept_attribution.ARM_REGISTRY[arm].grid(config))
        for _, indices in points:
          self.assertLen(indices, 2, (job, arm))
          claimed += indices
      self.assertEqual(sorted(claimed), list(range(len(runs))), job)
    # The update-space arms and their controls differ only in which features and which gains:
    # one job, one program.
    self.assertEqual({concept_attribution.ARM_REGISTRY[arm].job for arm in (
        "plain", "suppress", "amplify", "suppress_amplify", "random_features",
        "activation_features")}, {"gains"})
    self.assertEqual(concept_attribution.ARM_REGISTRY["suppress_live"].job,
                     concept_attribution.ARM_REGISTRY["plain_live"].job)

  def test_gpu_preset_builds_and_validates_without_training(self):
    config = experiment_config.get_config("gpu")
    self.assertEqual(config.sae.d_sae, 16_384)
    self.assertEqual(concept_attribution.validate(config), list(concept_attribution.ARMS))
    default = experiment_config.get_config("")
    self.assertGreater(config.model.d_model, default.model.d_model)
    self.assertGreater(config.world.num_words, default.world.num_words)
    # The site is one of the model the preset builds (checked without initialising it).
    world = _setting.make_world(config)
    model = _setting.make_model(config, world)
    model.check_sites([config.site], what="config.site")
    config.unlock()
    config.group_size = config.sae.d_sae  # three groups cannot fit
    with self.assertRaisesRegex(ConfigError, "config.group_size"):
      concept_attribution.validate(config)


if __name__ == "__main__":
  absltest.main()
