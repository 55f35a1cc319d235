"""Sparse autoencoders: each architecture's forward pass and loss against a float64 NumPy reference,
two-stage top-k identical to `jax.lax.top_k`, and the judging metrics against NumPy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from landscape import models
from landscape import sae as sae_lib
from landscape.sae import _topk as sae_topk
from landscape.sites import BadInputError

D_IN, D_SAE = 12, 40


def _acts(shape=(24, D_IN), seed=0, offset=0.0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32) + np.float32(offset)


def _random_sae(architecture, seed=0, **options):
  """An SAE with random (not initial) weights, so biases and norms all matter."""
  rng = np.random.default_rng(seed)
  sae = sae_lib.init_sae(jax.random.key(seed), architecture, D_IN, D_SAE, **options)
  changes = dict(W_enc=rng.normal(size=(D_IN, D_SAE)) / np.sqrt(D_IN),
                 b_enc=0.3 * rng.normal(size=D_SAE),
                 W_dec=rng.normal(size=(D_SAE, D_IN)) * rng.uniform(0.5, 2.0, size=(D_SAE, 1)),
                 b_dec=0.5 * rng.normal(size=D_IN))
  if architecture == "jumprelu":
    changes["threshold"] = rng.uniform(0.05, 0.4, size=D_SAE)
  if architecture == "batchtopk":
    changes["threshold"] = np.float32(0.35)
  return sae.replace(**{name: jnp.asarray(value, jnp.float32) for name, value in changes.items()})


def _f64(sae):
  return {name: np.asarray(getattr(sae, name), np.float64)
          for name in ("W_enc", "b_enc", "W_dec", "b_dec")}


def _pre(sae, x):
  w = _f64(sae)
  x = np.asarray(x, np.float64)
  if sae.apply_b_dec_to_input:
    x = x - w["b_dec"]
  return x @ w["W_enc"] + w["b_enc"]


def _top_rows(values, k):
  """Top-k per row as lax.top_k orders them: descending, lower index first among ties."""
  order = np.argsort(-values, axis=-1, kind="stable")[..., :k]
  return np.take_along_axis(values, order, -1), order


def _assert_gap(test, values, k):
  """The data leave a float32-safe gap between the k-th and (k+1)-th value among positives, so
  the reference's selection cannot flip with the summation order."""
  ranked = -np.sort(-values, axis=-1)
  kth, next_ = ranked[..., k - 1], ranked[..., k]
  gap = np.where(kth > 0, kth - next_, np.inf)
  test.assertGreater(gap.min(), 1e-4)


def _squared_error(x, x_hat):
  return np.mean(np.sum((np.asarray(x, np.float64) - x_hat) ** 2, axis=-1))


def _auxk_reference(sae, post, residual, dead, k_aux):
  w = _f64(sae)
  codes = np.zeros_like(post)
  for row in range(post.shape[0]):
    candidates = np.nonzero(dead)[0]
    order = candidates[np.argsort(-post[row, candidates], kind="stable")][:k_aux]
    codes[row, order] = post[row, order]
  error = np.mean(np.sum((residual - codes @ w["W_dec"]) ** 2, axis=-1))
  centred = residual - residual.mean(axis=0)
  return error / np.mean(np.sum(centred ** 2, axis=-1))


class ArchitectureTest(parameterized.TestCase):

  def test_topk_forward_and_loss(self):
    sae = _random_sae("topk", k=5)
    x = _acts()
    post = np.maximum(_pre(sae, x), 0)
    _assert_gap(self, post, 5)
    values, order = _top_rows(post, 5)
    codes = np.zeros_like(post)
    np.put_along_axis(codes, order, values, -1)
    x_hat = codes @ _f64(sae)["W_dec"] + _f64(sae)["b_dec"]
    np.testing.assert_allclose(jax.jit(sae.encode)(x), codes, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(sae)(x), x_hat, rtol=1e-5, atol=1e-5)
    dead = np.arange(D_SAE) % 3 == 0
    loss, aux = jax.jit(lambda s, x: sae_lib.topk_loss(s, x, dead=dead, auxk_coefficient=0.5))(
        sae, x)
    auxk = _auxk_reference(sae, post, np.asarray(x, np.float64) - x_hat, dead, D_IN // 2)
    expected = _squared_error(x, x_hat) + 0.5 * auxk
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(aux.metrics.squared_error, _squared_error(x, x_hat), rtol=1e-5)
    np.testing.assert_allclose(aux.metrics.auxk_loss, 0.5 * auxk, rtol=1e-5)
    np.testing.assert_allclose(aux.metrics.l0, np.mean(np.sum(codes > 0, -1)), rtol=1e-6)
    np.testing.assert_array_equal(aux.fired, np.any(codes > 0, axis=0))
    self.assertEqual(aux.metrics.sparsity_loss, 0.0)

  def test_topk_auxk_with_fewer_dead_than_k_aux_and_none_dead(self):
    sae = _random_sae("topk", k=5)
    x = _acts(seed=3)
    dead = np.zeros(D_SAE, bool)
    dead[[2, 7]] = True  # 2 dead latents < k_aux = 6
    post = np.maximum(_pre(sae, x), 0)
    values, order = _top_rows(post, 5)
    codes = np.zeros_like(post)
    np.put_along_axis(codes, order, values, -1)
    residual = np.asarray(x, np.float64) - (codes @ _f64(sae)["W_dec"] + _f64(sae)["b_dec"])
    _, aux = sae_lib.topk_loss(sae, x, dead=dead, auxk_coefficient=1.0)
    np.testing.assert_allclose(aux.metrics.auxk_loss,
                               _auxk_reference(sae, post, residual, dead, 6), rtol=1e-5)
    _, aux = sae_lib.topk_loss(sae, x, dead=np.zeros(D_SAE, bool), auxk_coefficient=1.0)
    self.assertEqual(float(aux.metrics.auxk_loss), 0.0)

  def test_topk_traced_k_is_a_smaller_top_k(self):
    sae = _random_sae("topk", k=7)
    x = _acts(seed=2)
    smaller = sae.replace(k=3)
    np.testing.assert_array_equal(jax.jit(lambda s, k: s.encode(x, k))(sae, 3), smaller.encode(x))
    loss, aux = jax.jit(lambda s, k: sae_lib.topk_loss(s, x, k=k))(sae, jnp.int32(3))
    expected_loss, expected_aux = sae_lib.topk_loss(smaller, x)
    np.testing.assert_array_equal(loss, expected_loss)
    np.testing.assert_array_equal(aux.fired, expected_aux.fired)

  def test_batchtopk_training_and_inference_forms(self):
    sae = _random_sae("batchtopk", k=4)
    x = _acts()
    post = np.maximum(_pre(sae, x), 0)
    flat = post.reshape(1, -1)
    _assert_gap(self, flat, 4 * x.shape[0])
    values, order = _top_rows(flat, 4 * x.shape[0])
    codes = np.zeros_like(flat)
    np.put_along_axis(codes, order, values, -1)
    codes = codes.reshape(post.shape)
    np.testing.assert_allclose(jax.jit(sae.encode_batch)(x), codes, rtol=1e-5, atol=1e-5)
    x_hat = codes @ _f64(sae)["W_dec"] + _f64(sae)["b_dec"]
    dead = np.arange(D_SAE) % 4 == 1
    loss, aux = jax.jit(lambda s, x: sae_lib.batchtopk_loss(s, x, dead=dead))(sae, x)
    auxk = _auxk_reference(sae, post, np.asarray(x, np.float64) - x_hat, dead, D_IN // 2)
    np.testing.assert_allclose(loss, _squared_error(x, x_hat) + auxk / 32, rtol=1e-5)
    np.testing.assert_allclose(aux.metrics.l0, 4.0, rtol=1e-6)
    np.testing.assert_allclose(aux.smallest_code, values[0, -1], rtol=1e-5)
    # Inference: a JumpReLU with the one global threshold, example by example.
    inference = np.where(post > 0.35, post, 0.0)
    np.testing.assert_allclose(jax.jit(sae.encode)(x), inference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sae.encode(x[:3]), inference[:3], rtol=1e-5, atol=1e-5)

  def test_jumprelu_forward_loss_and_straight_through_gradients(self):
    bandwidth = 0.5  # wide, so that many pre-activations fall inside the kernel's window
    sae = _random_sae("jumprelu", bandwidth=bandwidth)
    x = _acts()
    pre = _pre(sae, x)
    theta = np.asarray(sae.threshold, np.float64)
    self.assertFalse(sae.apply_b_dec_to_input)
    # No pre-activation within float32 rounding of a threshold or of a kernel edge.
    for edge in (theta, theta - bandwidth / 2, theta + bandwidth / 2):
      self.assertGreater(np.abs(pre - edge).min(), 1e-5)
    codes = np.where(pre > theta, np.maximum(pre, 0), 0.0)
    w = _f64(sae)
    x_hat = codes @ w["W_dec"] + w["b_dec"]
    l0_coefficient = 0.3
    expected = _squared_error(x, x_hat) + l0_coefficient * np.mean(np.sum(pre > theta, -1))
    np.testing.assert_allclose(jax.jit(sae.encode)(x), codes, rtol=1e-5, atol=1e-6)
    loss_fn = lambda s: sae_lib.jumprelu_loss(s, x, l0_coefficient=l0_coefficient)
    (loss, aux), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(sae)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(aux.metrics.sparsity_loss,
                               l0_coefficient * np.mean(np.sum(pre > theta, -1)), rtol=1e-6)
    # Reference gradients: d loss / d codes, then the pseudo-derivatives of Rajamanoharan et al.
    num = x.shape[0]
    d_codes = 2.0 / num * (x_hat - x) @ w["W_dec"].T
    window = (np.abs((pre - theta) / bandwidth) < 0.5).astype(np.float64)
    d_threshold = (np.sum(d_codes * -(theta / bandwidth) * window, axis=0)
                   + l0_coefficient / num * np.sum(-(1.0 / bandwidth) * window, axis=0))
    d_pre = d_codes * ((pre > theta) & (pre > 0))
    np.testing.assert_allclose(grads.threshold, d_threshold, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads.b_enc, d_pre.sum(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads.W_enc, np.asarray(x, np.float64).T @ d_pre, rtol=1e-4,
                               atol=1e-5)
    self.assertGreater(np.abs(d_threshold).min(initial=np.inf, where=window.any(0)), 0)

  def test_standard_forward_and_decoder_norm_weighted_l1(self):
    sae = _random_sae("standard")
    x = _acts(seed=5, shape=(3, 8, D_IN))
    pre = _pre(sae, x)
    codes = np.maximum(pre, 0)
    w = _f64(sae)
    x_hat = codes @ w["W_dec"] + w["b_dec"]
    norms = np.linalg.norm(w["W_dec"], axis=-1)
    l1 = np.mean(np.sum(codes * norms, -1))
    loss, aux = jax.jit(lambda s, x: sae_lib.standard_loss(s, x, l1_coefficient=0.2))(sae, x)
    np.testing.assert_allclose(jax.jit(sae)(x), x_hat, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss, _squared_error(x.reshape(-1, D_IN), x_hat.reshape(-1, D_IN))
                               + 0.2 * l1, rtol=1e-5)
    np.testing.assert_allclose(aux.metrics.sparsity_loss, 0.2 * l1, rtol=1e-5)

  @parameterized.parameters("topk", "batchtopk", "jumprelu", "standard")
  def test_init_ties_the_encoder_and_normalises_the_decoder(self, architecture):
    options = {"k": 3} if "topk" in architecture else {}
    sae = sae_lib.init_sae(jax.random.key(1), architecture, D_IN, D_SAE, decoder_norm=0.1,
                           **options)
    np.testing.assert_array_equal(sae.W_enc, sae.W_dec.T)
    np.testing.assert_allclose(np.linalg.norm(sae.W_dec, axis=-1), 0.1, rtol=1e-6)
    self.assertEqual((sae.d_in, sae.d_sae, sae.width), (D_IN, D_SAE, D_IN))
    chex.assert_shape(sae(_acts((2, 5, D_IN))), (2, 5, D_IN))
    untied = sae_lib.init_sae(jax.random.key(1), architecture, D_IN, D_SAE, tied=False, **options)
    self.assertFalse(np.allclose(untied.W_enc, untied.W_dec.T))

  def test_bad_init_is_named(self):
    with self.assertRaisesRegex(BadInputError, "unknown architecture 'gated'"):
      sae_lib.init_sae(jax.random.key(0), "gated", 4, 8)
    with self.assertRaisesRegex(BadInputError, "k=None"):
      sae_lib.init_sae(jax.random.key(0), "topk", 4, 8)
    with self.assertRaisesRegex(BadInputError, "k=9"):
      sae_lib.init_sae(jax.random.key(0), "topk", 4, 8, k=9)
    with self.assertRaisesRegex(BadInputError, r"shape \(3, 5\).*d_in=12"):
      sae_lib.topk_loss(_random_sae("topk", k=2), np.zeros((3, 5), np.float32))

  def test_an_sae_replaces_a_site_and_its_width_is_checked(self):
    model = models.mlp(6, [D_IN], 3)
    params = model.init(jax.random.key(0))
    inputs = _acts((4, 6))
    sae = _random_sae("standard")
    _, captured = model.forward(params, inputs, capture=["hidden_0"])
    _, replaced = model.forward(params, inputs, interventions={"hidden_0": sae},
                                capture=["hidden_0"])
    np.testing.assert_allclose(replaced["hidden_0"], sae(captured["hidden_0"]), rtol=1e-6)
    narrow = sae_lib.init_sae(jax.random.key(0), "standard", D_IN - 1, D_SAE)
    with self.assertRaisesRegex(BadInputError, r"width 11.*shape \(4, 12\)"):
      model.forward(params, inputs, interventions={"hidden_0": narrow})


class TopKTest(parameterized.TestCase):

  @parameterized.parameters(
      ((3, 1000), 7, 128),      # a partial last chunk
      ((2, 4096), 32, 256),
      ((5, 640), 64, 64),       # chunks exactly k wide
      ((1, 300), 150, 150),     # k = chunk, half of F
      ((2, 3, 513), 5, 64),     # several leading axes
  )
  def test_two_stage_equals_lax_top_k_on_random_data(self, shape, k, chunk_size):
    x = jnp.asarray(np.random.default_rng(sum(shape)).normal(size=shape), jnp.float32)
    got = jax.jit(lambda x: sae_lib.two_stage_top_k(x, k, chunk_size=chunk_size))(x)
    want = jax.lax.top_k(x, k)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])

  @parameterized.parameters(np.float32, jnp.bfloat16, np.int32)
  def test_two_stage_equals_lax_top_k_with_ties(self, dtype):
    rng = np.random.default_rng(7)
    # Few distinct values: every chunk holds many ties, across chunk borders too; and rows of
    # zeros (a ReLU's output) with -0.0 among them.
    values = rng.integers(-3, 4, size=(6, 1500)).astype(np.float32)
    values[1] = 0.0
    values[2, ::3] = -0.0
    values[3] = np.maximum(values[3], 0)
    x = jnp.asarray(values, dtype)
    for k in (1, 9, 100, 257):
      got = jax.jit(lambda x, k=k: sae_lib.two_stage_top_k(x, k, chunk_size=257))(x)
      want = jax.lax.top_k(x, k)
      np.testing.assert_array_equal(np.asarray(got[0], np.float32), np.asarray(want[0],
                                                                               np.float32))
      np.testing.assert_array_equal(got[1], want[1])

  def test_dispatch(self):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 600)), jnp.float32)
    for method in ("auto", "plain", "two_stage"):
      got = sae_lib.top_k(x, 5, method=method, chunk_size=64)
      np.testing.assert_array_equal(got[1], jax.lax.top_k(x, 5)[1])
    self.assertFalse(sae_topk.uses_two_stages(65536, 32, backend="cpu"))
    self.assertTrue(sae_topk.uses_two_stages(65536, 32, backend="gpu"))
    self.assertFalse(sae_topk.uses_two_stages(sae_topk.TWO_STAGE_MIN_WIDTH - 1, 32, backend="gpu"))
    with self.assertRaisesRegex(BadInputError, "method='fast'"):
      sae_lib.top_k(x, 5, method="fast")
    with self.assertRaisesRegex(BadInputError, "chunk_size=4 is smaller than k=5"):
      sae_lib.two_stage_top_k(x, 5, chunk_size=4)
    with self.assertRaisesRegex(BadInputError, r"k=601 must be in \[1, 600\]"):
      sae_lib.top_k(x, 601)

  def test_topk_sae_with_two_stage_method_equals_plain(self):
    sae = _random_sae("topk", k=6)
    x = _acts()
    two_stage = sae.replace(top_k_method="two_stage")
    np.testing.assert_array_equal(jax.jit(two_stage.encode)(x),
                                  jax.jit(sae.replace(top_k_method="plain").encode)(x))


class MetricsTest(absltest.TestCase):

  def test_reconstruction_metrics_against_numpy(self):
    x = _acts((50, D_IN), offset=3.0).astype(np.float64)
    x_hat = x + 0.3 * _acts((50, D_IN), seed=1) + 0.5
    fve = 1 - np.sum(np.var(x - x_hat, axis=0)) / np.sum(np.var(x, axis=0))
    nmse = np.mean(np.sum((x - x_hat) ** 2, -1) / np.sum(x ** 2, -1))
    np.testing.assert_allclose(jax.jit(sae_lib.fraction_variance_explained)(x, x_hat), fve,
                               rtol=1e-5)
    np.testing.assert_allclose(jax.jit(sae_lib.normalized_mse)(x, x_hat), nmse, rtol=1e-5)
    # The constant offset of 0.5 costs the centred metric nothing: it sees only the noise.
    np.testing.assert_allclose(sae_lib.fraction_variance_explained(x, x + 0.5), 1.0, atol=1e-6)
    self.assertGreater(float(sae_lib.normalized_mse(x, x + 0.5)), 0.01)

  def test_undefined_ratios_are_nan_never_inf(self):
    x = _acts((6, D_IN))
    same_rows = np.repeat(x[:1], 6, axis=0)
    self.assertTrue(np.isnan(jax.jit(sae_lib.fraction_variance_explained)(same_rows, x)))
    self.assertTrue(np.isnan(sae_lib.fraction_variance_explained(x[:1], x[:1] + 1)))
    with_zero_row = x.copy()
    with_zero_row[2] = 0.0
    self.assertTrue(np.isnan(jax.jit(sae_lib.normalized_mse)(with_zero_row, x)))
    self.assertTrue(np.isnan(sae_lib.normalized_mse(with_zero_row, with_zero_row)))
    # A model whose logits ignore the site: zero ablation costs nothing, nothing to recover.
    logits = jnp.asarray(_acts((5, 7), seed=2))
    labels = np.arange(5) % 7
    got = jax.jit(lambda: sae_lib.downstream_metrics(lambda intervention: logits, labels,
                                                     lambda a: a))()
    np.testing.assert_allclose([got.ce_clean, got.kl_zero], [got.ce_zero, 0.0], atol=1e-7)
    self.assertTrue(np.isnan(got.ce_recovered))
    self.assertTrue(np.isnan(got.kl_recovered))

  def test_density_histogram_names_bad_input(self):
    with self.assertRaisesRegex(BadInputError, r"density\[2\]=1.5 is not in \[0, 1\]"):
      sae_lib.density_histogram(np.array([0.1, 0.0, 1.5]))
    with self.assertRaisesRegex(BadInputError, r"density\[0\]=nan"):
      sae_lib.density_histogram(np.array([np.nan, 0.5]))
    with self.assertRaisesRegex(BadInputError, r"shape \(2, 2\)"):
      sae_lib.density_histogram(np.full((2, 2), 0.5))
    with self.assertRaisesRegex(BadInputError, r"shape \(0,\)"):
      sae_lib.density_histogram(np.zeros((0,)))
    with self.assertRaisesRegex(BadInputError, "bins=0"):
      sae_lib.density_histogram(np.full(3, 0.5), bins=0)
    with self.assertRaisesRegex(BadInputError, r"log10_range=\(0.0, -8.0\)"):
      sae_lib.density_histogram(np.full(3, 0.5), log10_range=(0.0, -8.0))

  def test_sparsity_density_and_dead_fraction(self):
    rng = np.random.default_rng(2)
    codes = np.where(rng.random((64, 30)) < 0.2, rng.exponential(size=(64, 30)), 0.0)
    codes[:, :4] = 0.0  # four dead latents
    codes = codes.astype(np.float32)
    np.testing.assert_allclose(sae_lib.l0(codes), np.mean(np.sum(codes != 0, -1)), rtol=1e-6)
    density = np.mean(codes != 0, axis=0)
    np.testing.assert_allclose(sae_lib.feature_density(codes), density, rtol=1e-6)
    counts = sae_lib.DensityCounts.zeros(30)
    for part in np.split(codes, 4):
      counts = jax.jit(sae_lib.update_density)(counts, part)
    self.assertEqual(int(counts.num_tokens), 64)
    np.testing.assert_allclose(sae_lib.feature_density(counts), density, rtol=1e-6)
    np.testing.assert_allclose(sae_lib.dead_fraction(density), 4 / 30, rtol=1e-6)
    histogram = sae_lib.density_histogram(density, bins=10, log10_range=(-3.0, 0.0))
    self.assertEqual(histogram.num_dead, 4)
    expected, _ = np.histogram(np.log10(density[density > 0]), bins=10, range=(-3.0, 0.0))
    np.testing.assert_array_equal(histogram.counts, expected)
    self.assertEqual(int(histogram.counts.sum()), 26)

  def test_ce_and_kl_recovered_against_numpy(self):
    model = models.mlp(5, [D_IN], 7)
    params = model.init(jax.random.key(3))
    inputs = _acts((30, 5), seed=4)
    labels = np.random.default_rng(5).integers(0, 7, size=30)
    weights = (np.arange(30) % 5 != 0).astype(np.float32)
    sae = _random_sae("topk", k=6)
    got = sae_lib.downstream_metrics(
        sae_lib.model_logits_with(model, params, inputs, site="hidden_0"), labels, sae,
        weights=weights)

    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    hidden = np.maximum(inputs @ p["hidden"]["0"]["kernel"] + p["hidden"]["0"]["bias"], 0)
    post = np.maximum(_pre(sae, hidden), 0)
    values, order = _top_rows(post, 6)
    codes = np.zeros_like(post)
    np.put_along_axis(codes, order, values, -1)
    reconstructed = codes @ _f64(sae)["W_dec"] + _f64(sae)["b_dec"]

    def log_softmax(h):
      logits = h @ p["output"]["kernel"] + p["output"]["bias"]
      shifted = logits - logits.max(-1, keepdims=True)
      return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))

    def mean(values):
      return np.sum(values * weights) / np.sum(weights)

    clean, with_sae, zero = (log_softmax(h) for h in (hidden, reconstructed, 0 * hidden))
    ce = [mean(-lp[np.arange(30), labels]) for lp in (clean, with_sae, zero)]
    kl = [mean(np.sum(np.exp(clean) * (clean - lp), -1)) for lp in (with_sae, zero)]
    np.testing.assert_allclose([got.ce_clean, got.ce_sae, got.ce_zero], ce, rtol=1e-5)
    np.testing.assert_allclose([got.kl_sae, got.kl_zero], kl, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got.ce_recovered, (ce[2] - ce[1]) / (ce[2] - ce[0]), rtol=1e-4)
    np.testing.assert_allclose(got.kl_recovered, (kl[1] - kl[0]) / kl[1], rtol=1e-4)
    # The identity as an "SAE" recovers everything.
    perfect = sae_lib.downstream_metrics(
        sae_lib.model_logits_with(model, params, inputs, site="hidden_0"), labels, lambda a: a)
    np.testing.assert_allclose([perfect.ce_recovered, perfect.kl_recovered], 1.0, atol=1e-6)


if __name__ == "__main__":
  absltest.main()
