"""Training SAEs: the planted dictionary and its recovery, the activation sources, and the step of many
SAEs in one program (the scaled-down planted run is in sae_planted_test.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from landscape import data
from landscape import models
from landscape import sae as sae_lib
from landscape import sae_sources
from landscape.sae import _train as sae_train
from landscape.sae import _training as sae_training
from landscape.sites import BadInputError


def _planted(d_in=16, num_features=64, probability=0.08, signed=False, seed=0):
  return sae_lib.planted_dictionary(jax.random.key(seed), d_in=d_in, num_features=num_features,
                                    probability=probability, noise_std=0.01, signed=signed)


class PlantedTest(absltest.TestCase):

  def test_features_are_unit_rows(self):
    planted = _planted()
    self.assertEqual(planted.features_NxD.shape, (64, 16))
    np.testing.assert_allclose(np.linalg.norm(planted.features_NxD, axis=1), 1.0, rtol=1e-6)

  def test_samples_have_the_planted_second_moment(self):
    for signed in (False, True):
      planted = _planted(signed=signed)
      x = np.asarray(jax.jit(planted.sample, static_argnums=1)(jax.random.key(1), 20_000),
                     np.float64)
      features = planted.features_NxD.astype(np.float64)
      p, n, d = planted.probability, planted.num_features, planted.d_in
      # E||sum_i a_i f_i + e||^2 = sum_i E[a_i^2] + sum_{i != j} E[a_i] E[a_j] f_i.f_j + D s^2, with
      # E[a^2] = 2p and E[a] = p (Exponential(1) when active) or 0 (random sign).
      cross = 0.0 if signed else p**2 * (np.sum(features.sum(0) ** 2) - n)
      expected = 2 * n * p + cross + d * planted.noise_std**2
      measured = np.mean(np.sum(x**2, axis=1))
      # Per example the squared norm has a standard deviation near sqrt(24 n p) ~ 11 (E[a^4] = 24),
      # so the mean of 20,000 has one near 0.08: 0.4 is five of them.
      self.assertAlmostEqual(measured, expected, delta=0.4)
      # E[x] = p sum_i f_i, or 0 with random signs; each coordinate's mean over 20,000 examples has
      # a standard deviation near sqrt(10.24 / 16 / 20,000) ~ 0.006: 0.03 is five of them.
      expected_mean = np.zeros(d) if signed else p * features.sum(0)
      np.testing.assert_allclose(x.mean(0), expected_mean, atol=0.03)

  def test_recovery_of_the_features_themselves_and_of_their_negatives(self):
    planted = _planted()
    rng = np.random.default_rng(0)
    decoder = np.concatenate([planted.features_NxD[rng.permutation(64)] * 3.0,
                              rng.normal(size=(20, 16))])
    recovery = sae_lib.feature_recovery(decoder, planted.features_NxD)
    self.assertAlmostEqual(recovery.mmcs, 1.0, places=6)
    self.assertEqual(recovery.fraction_above, 1.0)
    opposite = sae_lib.feature_recovery(-planted.features_NxD, planted.features_NxD)
    self.assertEqual(opposite.fraction_above, 0.0)

  def test_recovery_against_a_float64_reference(self):
    rng = np.random.default_rng(1)
    decoder, features = rng.normal(size=(30, 8)), rng.normal(size=(12, 8))
    recovery = sae_lib.feature_recovery(decoder, features, threshold=0.5)
    expected = [max(f @ r / np.linalg.norm(f) / np.linalg.norm(r) for r in decoder)
                for f in features]
    np.testing.assert_allclose(recovery.max_cosine, expected, rtol=1e-12)
    self.assertAlmostEqual(recovery.fraction_above, np.mean(np.asarray(expected) > 0.5))

  def test_bad_planted_arguments_are_named(self):
    with self.assertRaisesRegex(BadInputError, "probability=1.5"):
      _planted(probability=1.5)
    with self.assertRaisesRegex(BadInputError, r"\(5, 3\)"):
      sae_lib.feature_recovery(np.ones((5, 3)), np.ones((4, 2)))


class SourcesTest(absltest.TestCase):

  def test_array_source_visits_every_training_row_once_per_epoch(self):
    acts = np.arange(100 * 3, dtype=np.float32).reshape(100, 3)
    source = sae_sources.array_source(acts, batch_size=9, num_eval=10)
    np.testing.assert_array_equal(source.eval_acts, acts[90:])
    step = jax.jit(source.next)
    rows = np.concatenate([np.asarray(step(source.arrays, (), jax.random.key(0), t)[0])
                           for t in range(10)])
    np.testing.assert_array_equal(np.sort(rows[:, 0]), acts[:90, 0])
    next_epoch = np.asarray(step(source.arrays, (), jax.random.key(0), 10)[0])
    self.assertFalse(np.array_equal(next_epoch, rows[:9]))  # reshuffled

  def test_planted_stream_is_a_function_of_key_and_step(self):
    source = sae_lib.planted_source(_planted(), batch_size=8, eval_size=32)
    step = jax.jit(source.next)
    first = step(source.arrays, (), jax.random.key(0), 3)[0]
    np.testing.assert_array_equal(first, step(source.arrays, (), jax.random.key(0), 3)[0])
    self.assertFalse(np.array_equal(first, step(source.arrays, (), jax.random.key(0), 4)[0]))
    self.assertEqual(source.eval_acts.shape, (32, 16))

  def test_model_source_serves_the_sites_activations_from_a_bounded_buffer(self):
    dataset = data.digits()
    model = models.mlp(64, (16,), 10)
    params = model.init(jax.random.key(0))
    source = sae_sources.model_source(model, params, site="hidden_0", dataset=dataset,
                                      batch_size=32, buffer_size=256, model_batch_size=64)
    key = jax.random.key(3)
    state = jax.jit(source.init)(source.arrays, key)
    self.assertEqual(state.kept.shape, (128, 16))
    self.assertEqual(state.served.shape, (128, 16))
    step = jax.jit(source.next)
    served = []
    for t in range(12):  # three refills of 128 rows, four batches each
      batch, state = step(source.arrays, state, key, t)
      served.append(np.asarray(batch))
    served = np.concatenate(served + [np.asarray(state.kept)])
    _, captured = model.forward(params, jnp.asarray(dataset.arrays["inputs"]), capture=["hidden_0"])
    every = np.asarray(captured["hidden_0"])
    distances = np.min(np.sum((served[:, None, :] - every[None, :, :]) ** 2, -1), axis=1)
    self.assertLess(distances.max(), 1e-8)  # each row is a training example's activation
    # 4 x 128 rows entered (the initial half and three refills; four model batches of 64 distinct
    # images within the first epoch of 1,078): each was served or is still kept, once.
    self.assertLen(np.unique(served, axis=0), 512)
    np.testing.assert_array_equal(source.eval_acts.shape, (359, 16))

  def test_model_source_rejects_a_buffer_that_does_not_split_into_batches(self):
    model = models.mlp(64, (16,), 10)
    with self.assertRaisesRegex(BadInputError, "buffer_size=200"):
      sae_sources.model_source(model, model.init(jax.random.key(0)), site="hidden_0",
                               dataset=data.digits(), batch_size=32, buffer_size=200,
                               model_batch_size=64)


def _groups_one_program():
  recipe = sae_lib.Recipe("topk", d_sae=32, k=4, warmup_steps=2)
  members = (sae_lib.Member(seed=0, learning_rate=1e-3, k=4),
             sae_lib.Member(seed=1, learning_rate=3e-3, k=2),
             sae_lib.Member(seed=2, learning_rate=2e-3, k=3))
  together = [sae_lib.SAEGroup("all", recipe, members)]
  apart = [sae_lib.SAEGroup(f"m{i}", recipe, (member,)) for i, member in enumerate(members)]
  return together, apart


class TrainStepTest(absltest.TestCase):

  def test_many_saes_in_one_program_give_what_separate_groups_give(self):
    source = sae_lib.planted_source(_planted(), batch_size=64, eval_size=64)
    together, apart = _groups_one_program()
    results = []
    for groups in (together, apart):
      state = sae_lib.init_train_state(jax.random.key(0), groups, source, total_steps=6)
      state, _ = sae_lib.make_train_chunk(groups, source, total_steps=6)(state, source.arrays, 6)
      results.append(list(sae_lib.trained_saes(groups, state).values()))
    for joint, alone in zip(*results):
      self.assertEqual(joint.k, alone.k)
      # Vmapped and unbatched matmuls may sum in different orders: float32 rounding over six
      # Adam steps of size <= 3e-3.
      for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        np.testing.assert_allclose(getattr(joint, name), getattr(alone, name), atol=2e-6)

  def test_first_step_sets_b_dec_and_keeps_unit_decoder_rows(self):
    planted = _planted()
    source = sae_lib.planted_source(planted, batch_size=64, eval_size=64)
    recipe = sae_lib.Recipe("topk", d_sae=32, k=4, warmup_steps=0)
    groups = [sae_lib.SAEGroup("g", recipe, (sae_lib.Member(),))]
    state = sae_lib.init_train_state(jax.random.key(0), groups, source, total_steps=3)
    first_batch, _ = source.next(source.arrays, state.stream, state.stream_key, 0)
    step = jax.jit(sae_lib.make_train_step(groups, source, total_steps=3))
    after_one, _ = step(state, source.arrays)
    # b_dec is the batch's geometric median, then one Adam step (at most lr = 1e-3 per entry).
    median = np.asarray(sae_training.geometric_median(first_batch))
    np.testing.assert_allclose(after_one.groups["g"].sae.b_dec[0], median, atol=1.1e-3)
    after_two, _ = step(after_one, source.arrays)
    norms = np.linalg.norm(np.asarray(after_two.groups["g"].sae.W_dec[0], np.float64), axis=-1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-6)

  def test_every_recipe_switch_in_one_program(self):
    """AuxK on idle latents, resampling, k annealing, BatchTopK's threshold, decay and the
    sparsity warm-up, each on, over a few steps of one program."""
    source = sae_lib.planted_source(_planted(), batch_size=32, eval_size=64)
    # dead after 32 examples: a latent idle for one batch is dead (AuxK and resampling act at once).
    common = dict(d_sae=64, warmup_steps=1, decay_start=4, dead_after_tokens=32)
    groups = [
        sae_lib.SAEGroup("topk", sae_lib.Recipe("topk", k=16, k_anneal_steps=4, resample_every=3,
                                                **common), (sae_lib.Member(k=4),)),
        sae_lib.SAEGroup("batchtopk", sae_lib.Recipe("batchtopk", k=4, threshold_start_step=2,
                                                     **common), (sae_lib.Member(),)),
        sae_lib.SAEGroup("standard", sae_lib.Recipe("standard", sparsity_warmup_steps=4,
                                                    b_dec_init="mean", **common),
                         (sae_lib.Member(sparsity_coefficient=0.1),))]
    state = sae_lib.init_train_state(jax.random.key(0), groups, source, total_steps=6,
                                     normalize_inputs=True, normalization_rows=256)
    step = jax.jit(sae_lib.make_train_step(groups, source, total_steps=6))
    history = []
    for _ in range(6):
      before = state
      state, metrics = step(state, source.arrays)
      history.append((before, jax.device_get(metrics)))
    ks = [float(metrics["topk"]["k"][0]) for _, metrics in history]
    self.assertEqual(ks, [16, 13, 10, 7, 4, 4])
    self.assertTrue(any(metrics["topk"]["auxk_loss"][0] > 0 for _, metrics in history))
    rates = [float(metrics["topk"]["learning_rate"][0]) for _, metrics in history]
    np.testing.assert_allclose(rates, 1e-3 * np.array([0, 1, 1, 1, 1, 0.5]), rtol=1e-6)
    sparsity = [float(metrics["standard"]["sparsity_loss"][0]) for _, metrics in history]
    self.assertEqual(sparsity[0], 0.0)  # the penalty starts at 0
    self.assertGreater(sparsity[1], 0.0)
    thresholds = [float(before.groups["batchtopk"].sae.threshold[0]) for before, _ in history]
    self.assertEqual(thresholds[:3], [-1.0, -1.0, -1.0])  # first set after step 2
    self.assertGreater(float(state.groups["batchtopk"].sae.threshold[0]), 0.0)
    # Step 3 resampled latents idle for 32 examples: each got a direction of that step's batch as
    # its decoder row, its Adam moments zeroed and its firing count restarted.
    before, after = history[3][0], history[4][0]
    batch, _ = source.next(source.arrays, before.stream, before.stream_key, 3)
    units = np.asarray(batch * before.input_scale, np.float64)
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    mu = optax.tree_utils.tree_get(after.groups["topk"].opt_state, "mu")
    resampled = np.all(np.asarray(mu.W_dec[0]) == 0, axis=-1)
    self.assertTrue(resampled.any())
    rows = np.asarray(after.groups["topk"].sae.W_dec[0], np.float64)[resampled]
    np.testing.assert_allclose(np.max(rows @ units.T, axis=1), 1.0, atol=1e-5)
    firing = np.asarray(after.groups["topk"].firing.tokens_since_fired[0])
    np.testing.assert_array_equal(firing[resampled], 0)
    for group in state.groups.values():
      for leaf in jax.tree_util.tree_leaves(group):
        self.assertTrue(np.all(np.isfinite(np.asarray(leaf, np.float64))))

  def test_bfloat16_compute_keeps_float32_state_and_follows_float32(self):
    acts = jnp.asarray(np.random.default_rng(0).normal(size=(64, 16)), jnp.float32)
    learning_rate = 1e-3
    member = sae_lib.Member(learning_rate=learning_rate)
    results = {}
    for dtype in ("float32", "bfloat16"):
      recipe = sae_lib.Recipe("topk", d_sae=32, k=4, warmup_steps=0, compute_dtype=dtype)
      hyper = sae_train.member_hyperparams(sae_lib.SAEGroup("g", recipe, (member,)), member)
      state = sae_train.init_sae_state(jax.random.key(0), recipe, 16, hyper, total_steps=10)
      results[dtype] = jax.jit(lambda state, recipe=recipe: sae_lib.sae_train_step(
          recipe, state, acts, jnp.int32(0), jax.random.key(1), total_steps=10))(state)
    (state32, metrics32), (state16, metrics16) = results["float32"], results["bfloat16"]
    for leaf in jax.tree_util.tree_leaves((state16.sae, state16.opt_state)):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        self.assertEqual(leaf.dtype, jnp.float32)
    # bfloat16 keeps 8 bits of mantissa: the loss agrees to a few parts in a thousand; Adam's first
    # step moves every parameter by at most the learning rate, whatever the gradient's rounding.
    np.testing.assert_allclose(metrics16["loss"], metrics32["loss"], rtol=1e-2)
    for got, want in ((state16.sae.W_enc, state32.sae.W_enc),
                      (state16.sae.b_enc, state32.sae.b_enc)):
      self.assertLessEqual(float(jnp.max(jnp.abs(got - want))), 2 * learning_rate + 1e-6)

  def test_learning_rate_schedule(self):
    recipe = sae_lib.Recipe("topk", d_sae=8, k=2, warmup_steps=10, decay_start=60)
    factor = sae_train.learning_rate_factor(recipe, 100)
    counts = np.arange(0, 101)
    expected = np.where(counts < 10, counts / 10,
                        np.where(counts >= 60, (100 - counts) / 40, 1.0))
    np.testing.assert_allclose([float(factor(c)) for c in counts], expected, rtol=1e-6,
                               atol=1e-7)

  def test_k_annealing_reaches_each_members_k(self):
    recipe = sae_lib.Recipe("topk", d_sae=32, k=16, k_anneal_steps=4)
    group = sae_lib.SAEGroup("g", recipe, (sae_lib.Member(k=4), sae_lib.Member(seed=1, k=8)))
    schedules = [np.asarray(sae_train.member_hyperparams(group, m).k_schedule)
                 for m in group.members]
    np.testing.assert_array_equal(schedules[0], [16, 13, 10, 7, 4])
    np.testing.assert_array_equal(schedules[1], [16, 14, 12, 10, 8])

  def test_bad_groups_are_named(self):
    bad = [(sae_lib.Recipe("topk", d_sae=8, k=9), "k=9"),
           (sae_lib.Recipe("relu", d_sae=8), "architecture='relu'"),
           (sae_lib.Recipe("standard", d_sae=8, k=2), "k=2"),
           (sae_lib.Recipe("topk", d_sae=8, k=2, b_dec_init="median"), "b_dec_init='median'"),
           (sae_lib.Recipe("topk", d_sae=8, k=2, warmup_steps=-1), "warmup_steps=-1"),
           (sae_lib.Recipe("topk", d_sae=8, k=2, compute_dtype="float16"),
            "compute_dtype='float16'")]
    for recipe, named in bad:
      with self.assertRaisesRegex(BadInputError, named):
        sae_train.check_group(sae_lib.SAEGroup("g", recipe, (sae_lib.Member(),)))
    with self.assertRaisesRegex(BadInputError, r"members\[0\].k"):
      sae_train.check_group(sae_lib.SAEGroup("g", sae_lib.Recipe("topk", d_sae=8, k=2),
                                           (sae_lib.Member(k=3),)))


if __name__ == "__main__":
  absltest.main()
