"""Per-example masks and gradient routing (Cloud et al., 2024, arXiv 2410.04332) against NumPy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from landscape import interventions
from landscape import models
from landscape.sites import BadInputError

SITE = "hidden_0"
IN, HIDDEN, OUT, BATCH = 5, 6, 3, 4
MODEL = models.mlp(IN, (HIDDEN,), OUT)


def _inputs_and_targets():
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.normal(size=(BATCH, IN)), jnp.float32),
          jnp.asarray(rng.normal(size=(BATCH, OUT)), jnp.float32))


def _mask_BxD():
  """A 0/1 mask per example (example 3 keeps everything), as the routing of a data-chosen split."""
  mask = np.ones((BATCH, HIDDEN), np.float32)
  mask[0, :3] = 0.0
  mask[1, 3:] = 0.0
  mask[2, ::2] = 0.0
  return mask


def _per_example_loss(outputs_BxO, targets_BxO):
  return 0.5 * jnp.sum((outputs_BxO - targets_BxO) ** 2, axis=-1)


def _numpy_example_gradient(params, inputs, targets, mask_BxD, mode, b):
  """Example b's gradient of 0.5 |W2^T h' + b2 - t|^2 by hand, in float64, h' the masked hidden."""
  w1, b1 = (np.asarray(params["hidden"]["0"][k], np.float64) for k in ("kernel", "bias"))
  w2, b2 = (np.asarray(params["output"][k], np.float64) for k in ("kernel", "bias"))
  x = np.asarray(inputs, np.float64)[b]
  pre = x @ w1 + b1
  hidden = np.maximum(pre, 0.0)
  mask = np.asarray(mask_BxD, np.float64)[b]
  value_mask = mask if mode in ("forward", "both") else np.ones_like(mask)
  gradient_mask = mask if mode in ("backward", "both") else np.ones_like(mask)
  seen = hidden * value_mask
  d_outputs = seen @ w2 + b2 - np.asarray(targets, np.float64)[b]
  d_pre = (d_outputs @ w2.T) * gradient_mask * (pre > 0)
  return {"hidden": {"0": {"kernel": np.outer(x, d_pre), "bias": d_pre}},
          "output": {"kernel": np.outer(seen, d_outputs), "bias": d_outputs}}


@jax.jit
def _example_gradient(params, inputs, targets, mask, one_hot_B, mode_index):
  """Example b's gradient (one_hot_B = e_b) under a mask in each mode, from one batched pass."""

  def loss(params, mode):
    routed = {SITE: interventions.mask_examples(mask, mode=mode)}
    outputs, _ = MODEL.forward(params, inputs, interventions=routed)
    return jnp.sum(one_hot_B * _per_example_loss(outputs, targets))

  return jax.lax.switch(mode_index, [lambda p, mode=mode: jax.grad(loss)(p, mode)
                                     for mode in interventions.MASK_MODES], params)


class GradientRoutingInAnMLPTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.params = MODEL.init(jax.random.PRNGKey(3))
    cls.inputs, cls.targets = _inputs_and_targets()

  @parameterized.parameters("backward", "forward", "both")
  def test_each_examples_gradient_matches_numpy(self, mode):
    mask = _mask_BxD()
    for b in range(BATCH):
      gradient = _example_gradient(self.params, self.inputs, self.targets, jnp.asarray(mask),
                                   jnp.eye(BATCH)[b], interventions.MASK_MODES.index(mode))
      reference = _numpy_example_gradient(self.params, self.inputs, self.targets, mask, mode, b)
      # float32 forward and backward of a 5-6-3 MLP with O(1) values: errors of a few 1e-7.
      chex.assert_trees_all_close(gradient, reference, atol=1e-5, rtol=1e-5)

  def test_routed_example_never_reaches_weights_behind_its_masked_coordinates(self):
    mask = _mask_BxD()
    for b in range(BATCH):
      gradient = _example_gradient(self.params, self.inputs, self.targets, jnp.asarray(mask),
                                   jnp.eye(BATCH)[b], interventions.MASK_MODES.index("backward"))
      kernel = np.asarray(gradient["hidden"]["0"]["kernel"])
      bias = np.asarray(gradient["hidden"]["0"]["bias"])
      masked = mask[b] == 0
      # Exactly zero: the routed cotangent is multiplied by 0.0, not merely small.
      np.testing.assert_array_equal(kernel[:, masked], 0.0)
      np.testing.assert_array_equal(bias[masked], 0.0)
      # The coordinates it keeps do learn (those of live relus), so the zeros are the mask's doing.
      self.assertGreater(np.abs(kernel[:, ~masked]).max(), 1e-4)
      # The readout sees the unchanged forward value, so every example still trains all of it.
      unrouted = _example_gradient(self.params, self.inputs, self.targets, jnp.ones((BATCH, HIDDEN)),
                                   jnp.eye(BATCH)[b], interventions.MASK_MODES.index("backward"))
      np.testing.assert_array_equal(gradient["output"]["kernel"], unrouted["output"]["kernel"])

  def test_backward_only_mask_leaves_the_forward_pass_bitwise_unchanged(self):
    plain, plain_acts = MODEL.forward(self.params, self.inputs, capture=[SITE])
    routed, routed_acts = MODEL.forward(
        self.params, self.inputs, capture=[SITE],
        interventions={SITE: interventions.route_gradients(_mask_BxD())})
    np.testing.assert_array_equal(routed, plain)
    np.testing.assert_array_equal(routed_acts[SITE], plain_acts[SITE])

  def test_the_mask_gets_no_gradient(self):
    acts = jnp.asarray(np.random.default_rng(1).normal(size=(BATCH, HIDDEN)), jnp.float32)
    for mode in interventions.MASK_MODES:
      gradient = jax.grad(lambda mask, mode=mode: jnp.sum(
          interventions.mask_examples(mask, mode=mode)(acts) ** 2))(jnp.asarray(_mask_BxD()))
      np.testing.assert_array_equal(gradient, 0.0)


class MaskAtSequenceSitesTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("per_example", (3,)),
      ("per_example_and_coordinate", (3, 4)),
      ("per_position", (3, 2, 4)),
  )
  def test_sequence_site_value_and_gradient_against_numpy(self, mask_shape):
    rng = np.random.default_rng(2)
    acts = rng.normal(size=(3, 2, 4)).astype(np.float32)
    weights = rng.normal(size=(3, 2, 4)).astype(np.float32)
    mask = rng.uniform(size=mask_shape).astype(np.float32)
    expanded = mask.reshape(mask.shape[:1] + (1,) * (3 - mask.ndim) + mask.shape[1:])
    expected = {"backward": (acts, weights * expanded), "forward": (acts * expanded, weights),
                "both": (acts * expanded, weights * expanded)}
    for mode, (value, gradient) in expected.items():
      masked = interventions.mask_examples(mask, mode=mode)
      np.testing.assert_allclose(jax.jit(masked)(acts), value, rtol=1e-6)
      np.testing.assert_allclose(jax.grad(lambda a: jnp.sum(masked(a) * weights))(jnp.asarray(acts)),
                                 gradient, rtol=1e-6)

  def test_scanned_gpt_site_routes_each_examples_gradient(self):
    config = models.GPTConfig(vocab_size=11, d_model=8, num_heads=2, num_layers=2, d_mlp=16,
                              max_len=5, scan_layers=True)
    model = models.gpt(config)
    params = model.init(jax.random.PRNGKey(0))
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, 11, size=(2, 5)), jnp.int32)
    mask = np.ones((2, 16), np.float32)
    mask[0, :8] = 0.0
    routed = {"blocks.0.mlp_hidden": interventions.route_gradients(mask)}

    def example_gradient(chosen):
      def loss(params):
        logits, _ = model.forward(params, tokens, interventions=chosen)
        return jnp.sum(logits[0] ** 2)
      return jax.grad(loss)(params)["blocks"]["mlp"]["hidden"]["kernel"]  # (L, D, d_mlp)

    np.testing.assert_array_equal(model.forward(params, tokens, interventions=routed)[0],
                                  model.forward(params, tokens)[0])
    kernel = np.asarray(example_gradient(routed))
    unrouted = np.asarray(example_gradient({}))
    # Layer 0's hidden columns masked for example 0 get exactly nothing from it; the others, and
    # layer 1 (the scan applies the mask at layer 0 only), learn as without routing.
    np.testing.assert_array_equal(kernel[0][:, :8], 0.0)
    self.assertGreater(np.abs(kernel[0][:, 8:]).max(), 1e-6)
    # float32 backward through two blocks of width 8: a few ulps from another summation order.
    np.testing.assert_allclose(kernel[0][:, 8:], unrouted[0][:, 8:], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(kernel[1], unrouted[1], rtol=1e-5, atol=1e-7)


class BadMaskTest(parameterized.TestCase):

  def test_unknown_mode_names_the_mode(self):
    with self.assertRaisesRegex(BadInputError, r"mode='sideways'.*backward"):
      interventions.mask_examples(np.ones((2, 3)), mode="sideways")

  def test_batch_size_mismatch_names_both_sizes(self):
    params = MODEL.init(jax.random.PRNGKey(0))
    inputs, _ = _inputs_and_targets()
    with self.assertRaisesRegex(BadInputError, r"mask has shape \(3, 6\), 3 examples, for a batch of 4"):
      MODEL.forward(params, inputs, interventions={SITE: interventions.route_gradients(np.ones((3, 6)))})

  def test_wrong_width_names_the_site_and_width(self):
    params = MODEL.init(jax.random.PRNGKey(0))
    inputs, _ = _inputs_and_targets()
    with self.assertRaisesRegex(BadInputError, r"MaskExamples at site 'hidden_0' has width 7"):
      MODEL.forward(params, inputs, interventions={SITE: interventions.route_gradients(np.ones((4, 7)))})

  def test_scalar_mask_is_refused(self):
    with self.assertRaisesRegex(BadInputError, r"mask has shape \(\)"):
      interventions.mask_examples(1.0)


if __name__ == "__main__":
  absltest.main()
