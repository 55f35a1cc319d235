"""Interventions against float64 NumPy references, and at a model's sites."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from landscape import interventions
from landscape import models
from landscape.directions import make_basis
from landscape.sites import BadInputError
from landscape.sites import SiteShapeError
from landscape.sites import before_interventions
from landscape.sites import UnknownSiteError

WIDTH = 12


def _basis(num_directions, seed=0):
  return make_basis(np.random.default_rng(seed).normal(size=(num_directions, WIDTH)), site="hidden_0")


def _acts(shape=(5, 3, WIDTH), seed=1):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


class InterventionValuesTest(parameterized.TestCase):

  @parameterized.parameters((1,), (3,), (WIDTH,))
  def test_zero_ablation_leaves_no_component_along_basis(self, num_directions):
    basis = _basis(num_directions)
    acts = _acts()
    ablated = jax.jit(interventions.ablate(basis))(acts)
    q = np.asarray(basis.vectors, np.float64)
    np.testing.assert_allclose(np.asarray(ablated, np.float64) @ q.T, 0.0, atol=1e-5)
    reference = np.asarray(acts, np.float64) - (np.asarray(acts, np.float64) @ q.T) @ q
    np.testing.assert_allclose(ablated, reference, atol=1e-5)

  def test_mean_ablation_sets_component_to_the_means(self):
    basis = _basis(2)
    acts = _acts((40, WIDTH))
    mean = jnp.asarray(np.random.default_rng(3).normal(size=WIDTH), jnp.float32)
    ablated = interventions.ablate(basis, mean=mean)(acts)
    q = np.asarray(basis.vectors, np.float64)
    np.testing.assert_allclose(np.asarray(ablated) @ q.T, np.tile(np.asarray(mean) @ q.T, (40, 1)),
                               atol=1e-5)
    orthogonal = np.eye(WIDTH) - q.T @ q
    np.testing.assert_allclose(np.asarray(ablated) @ orthogonal, np.asarray(acts) @ orthogonal, atol=1e-5)

  def test_steering_adds_exactly_alpha_times_vector(self):
    vector = jnp.asarray(np.random.default_rng(4).normal(size=WIDTH), jnp.float32)
    acts = _acts()
    for alpha in (0.0, 2.5, -1.0):
      steered = jax.jit(lambda a, alpha=alpha: interventions.steer(vector, alpha)(a))(acts)
      np.testing.assert_array_equal(steered, np.asarray(acts) + np.float32(alpha) * np.asarray(vector))

  def test_clamp_sets_the_coordinate(self):
    direction = _basis(1).vectors[0]
    clamped = interventions.clamp(direction, 3.0)(_acts())
    np.testing.assert_allclose(np.asarray(clamped) @ np.asarray(direction), 3.0, atol=1e-5)

  def test_scale_applies_gain_along_each_direction(self):
    basis = _basis(3)
    gains = jnp.asarray([0.0, 0.5, 4.0])
    acts = _acts()
    scaled = interventions.scale(basis, gains)(acts)
    q = np.asarray(basis.vectors, np.float64)
    np.testing.assert_allclose(np.asarray(scaled) @ q.T, (np.asarray(acts) @ q.T) * np.asarray(gains),
                               atol=1e-5)
    orthogonal = np.eye(WIDTH) - q.T @ q
    np.testing.assert_allclose(np.asarray(scaled) @ orthogonal, np.asarray(acts) @ orthogonal, atol=1e-5)

  def test_backward_only_forward_unchanged_and_gradient_projected(self):
    basis = _basis(2)
    acts = _acts()
    weights = _acts(seed=9)
    backward = interventions.ablate(basis, backward_only=True)
    np.testing.assert_array_equal(jax.jit(backward)(acts), acts)
    gradient = jax.grad(lambda a: jnp.sum(backward(a) * weights))(acts)
    q = np.asarray(basis.vectors, np.float64)
    np.testing.assert_allclose(gradient, np.asarray(weights) - (np.asarray(weights) @ q.T) @ q, atol=1e-5)

  def test_reverse_gradient_flips_sign_and_keeps_value(self):
    acts = _acts()
    np.testing.assert_array_equal(interventions.reverse_gradient(acts, 1.0), acts)
    weights = _acts(seed=5)
    gradient = jax.grad(lambda a: jnp.sum(interventions.reverse_gradient(a, 0.5) * weights))(acts)
    np.testing.assert_array_equal(gradient, -0.5 * np.asarray(weights))

  def test_interventions_are_pytrees_usable_under_jit_and_vmap(self):
    basis = _basis(2)
    stacked = interventions.Ablate(jnp.stack([basis.vectors, -basis.vectors]))
    acts = _acts((4, WIDTH))
    out = jax.jit(jax.vmap(lambda ablation: ablation(acts)))(stacked)
    chex.assert_shape(out, (2, 4, WIDTH))
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)

  def test_clamp_rejects_several_directions(self):
    with self.assertRaisesRegex(ValueError, r"one direction, got 2"):
      interventions.clamp(_basis(2), 1.0)


class SteerPositionsTest(parameterized.TestCase):
  """`steer(..., positions=...)` adds the vector at chosen positions of the sequence axis only."""

  def setUp(self):
    super().setUp()
    self.vector = jnp.asarray(np.random.default_rng(4).normal(size=WIDTH), jnp.float32)
    self.acts = _acts((3, 5, WIDTH))

  def test_no_positions_is_the_steering_of_every_position_bitwise(self):
    for alpha in (0.0, 2.5, -1.0):
      default = jax.jit(lambda a, alpha=alpha: interventions.steer(self.vector, alpha)(a))(self.acts)
      every = jax.jit(lambda a, alpha=alpha: interventions.steer(
          self.vector, alpha, positions=None)(a))(self.acts)
      np.testing.assert_array_equal(every, default)
      np.testing.assert_array_equal(
          every, np.asarray(self.acts) + np.float32(alpha) * np.asarray(self.vector))

  @parameterized.parameters(dict(positions=-1), dict(positions=4), dict(positions=(0, 2)),
                            dict(positions=[1, -1]), dict(positions=(-5,)))
  def test_only_the_chosen_positions_move_by_alpha_times_vector(self, positions):
    alpha = 1.75
    steered = np.asarray(jax.jit(lambda a: interventions.steer(
        self.vector, alpha, positions=positions)(a))(self.acts), np.float64)
    chosen = np.zeros(5, bool)
    chosen[np.atleast_1d(positions)] = True
    reference = np.asarray(self.acts, np.float64).copy()
    reference[:, chosen] += alpha * np.asarray(self.vector, np.float64)
    # Positions not chosen are untouched, bitwise; the chosen ones differ from the float64 sum by
    # float32 rounding of O(1) values.
    np.testing.assert_array_equal(steered[:, ~chosen], np.asarray(self.acts)[:, ~chosen])
    np.testing.assert_allclose(steered[:, chosen], reference[:, chosen], rtol=1e-6, atol=1e-6)
    # d/d alpha of sum(weights * steered) is the sum over chosen positions of weights . vector.
    weights = _acts((3, 5, WIDTH), seed=7)
    gradient = jax.grad(lambda a: jnp.sum(weights * interventions.steer(
        self.vector, a, positions=positions)(self.acts)))(jnp.float32(alpha))
    expected = np.einsum("btd,d->", np.asarray(weights, np.float64)[:, chosen],
                         np.asarray(self.vector, np.float64))
    np.testing.assert_allclose(gradient, expected, rtol=1e-5, atol=1e-5)

  def test_positions_under_vmap_of_vectors(self):
    vectors = jnp.stack([self.vector, -self.vector, 0 * self.vector])
    steered = jax.jit(jax.vmap(lambda v: interventions.steer(v, 1.0, positions=-1)(self.acts)))(
        vectors)
    chex.assert_shape(steered, (3, 3, 5, WIDTH))
    for index in range(3):
      np.testing.assert_array_equal(steered[index, :, :-1], self.acts[:, :-1])
    np.testing.assert_array_equal(steered[2], self.acts)

  @parameterized.parameters(
      (5, r"positions=\(5,\) has \[5\] outside \[-5, 5\) for a sequence of length 5"),
      ((0, -6), r"positions=\(0, -6\) has \[-6\] outside \[-5, 5\)"),
      ((-1, 4), r"positions=\(-1, 4\) names a position twice"))
  def test_out_of_range_positions_name_the_value_and_the_length(self, positions, message):
    steering = interventions.steer(self.vector, 1.0, positions=positions)
    with self.assertRaisesRegex(BadInputError, message):
      steering(self.acts)
    with self.assertRaisesRegex(BadInputError, message):
      jax.jit(steering)(self.acts)

  @parameterized.parameters(dict(positions="last"), dict(positions=1.5), dict(positions=True),
                            dict(positions=()), dict(positions=[[0, 1]]),
                            dict(positions=(0, "1")))
  def test_positions_of_the_wrong_type_are_refused_by_name(self, positions):
    with self.assertRaisesRegex(BadInputError, r"steer: positions=.*expected None \(every "
                                r"position\), an int or a non-empty sequence of ints"):
      interventions.steer(self.vector, 1.0, positions=positions)

  def test_positions_need_a_sequence_axis(self):
    with self.assertRaisesRegex(BadInputError, r"positions=\(-1,\) needs an activation \(B, T, "
                                r"\.\.\., D\).*shape \(4, 12\)"):
      interventions.steer(self.vector, 1.0, positions=-1)(_acts((4, WIDTH)))

  def test_in_a_gpt_magnitude_zero_is_bitwise_and_the_last_position_moves_only_its_logits(self):
    model = models.gpt(models.GPTConfig(vocab_size=11, max_len=6, d_model=WIDTH, num_layers=2,
                                        num_heads=2))
    params = model.init(jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 6), 0, 11)
    site = "blocks.0.resid_post"
    plain = np.asarray(model.forward(params, tokens)[0])
    # Op by op (un-jitted), adding zero is exact and every later op sees the same values.
    for positions in (None, -1, (0, 3)):
      zero = interventions.steer(self.vector, 0.0, positions=positions)
      np.testing.assert_array_equal(model.forward(params, tokens, interventions={site: zero})[0],
                                    plain)
    steered = np.asarray(model.forward(params, tokens, interventions={
        site: interventions.steer(self.vector, 3.0, positions=-1)})[0])
    # Causal attention: the positions before the last do not see it.
    np.testing.assert_array_equal(steered[:, :-1], plain[:, :-1])
    self.assertGreater(np.abs(steered[:, -1] - plain[:, -1]).max(), 1e-3)

  def test_backward_only_with_positions_keeps_the_value(self):
    steering = interventions.steer(self.vector, 2.0, positions=(1, 3), backward_only=True)
    np.testing.assert_array_equal(jax.jit(steering)(self.acts), self.acts)


class BackwardOnlyCallableTest(absltest.TestCase):

  def test_plain_function_keeps_the_value_and_routes_the_gradient_through_it(self):
    gains = np.random.default_rng(6).uniform(-2.0, 2.0, size=WIDTH).astype(np.float32)
    acts, weights = _acts(), _acts(seed=9)
    for inner, expected_gradient in ((lambda a: a * 0.0, np.zeros(acts.shape)),
                                     (lambda a: a * gains[None, None], np.asarray(weights) * gains)):
      backward = interventions.BackwardOnly(inner)
      np.testing.assert_array_equal(jax.jit(backward)(acts), acts)
      gradient = jax.jit(jax.grad(lambda a: jnp.sum(backward(a) * weights)))(acts)
      np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-6)

  def test_closure_over_a_traced_value_gets_no_gradient_of_its_own(self):
    acts, weights = _acts((4, WIDTH)), _acts((4, WIDTH), seed=9)

    def loss(gain, a):
      return jnp.sum(interventions.BackwardOnly(lambda x: jnp.tanh(x) * gain)(a) * weights)

    gain = jnp.asarray(1.5, jnp.float32)
    d_gain, d_acts = jax.jit(jax.grad(loss, argnums=(0, 1)))(gain, acts)
    a64 = np.asarray(acts, np.float64)
    np.testing.assert_allclose(d_acts, np.asarray(weights) * 1.5 * (1.0 - np.tanh(a64) ** 2),
                               rtol=1e-5)
    self.assertEqual(float(d_gain), 0.0)

  def test_pytree_intervention_with_traced_arrays_and_as_a_jit_argument(self):
    basis = _basis(2)
    acts, weights = _acts(), _acts(seed=9)

    @jax.jit
    def gradient(basis_KxD, a):
      backward = interventions.BackwardOnly(interventions.Ablate(basis_KxD))
      return jax.grad(lambda x: jnp.sum(backward(x) * weights))(a)

    q = np.asarray(basis.vectors, np.float64)
    np.testing.assert_allclose(gradient(basis.vectors, acts),
                               np.asarray(weights) - (np.asarray(weights) @ q.T) @ q, atol=1e-5)
    # As a pytree: arrays are leaves, a plain function is static.
    self.assertLen(jax.tree_util.tree_leaves(interventions.ablate(basis, backward_only=True)), 1)
    plain = interventions.BackwardOnly(lambda a: 2.0 * a)
    self.assertEmpty(jax.tree_util.tree_leaves(plain))
    np.testing.assert_array_equal(jax.jit(lambda b, a: b(a))(plain, acts), acts)

  def test_not_a_function_names_backward_only(self):
    with self.assertRaisesRegex(BadInputError, r"BackwardOnly: inner is a float \(2.0\)"):
      interventions.BackwardOnly(2.0)(_acts())


class InterventionsInModelsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.model = models.mlp(64, (WIDTH, 8), 10)
    self.params = self.model.init(jax.random.PRNGKey(0))
    self.inputs = _acts((6, 8, 8), seed=2)

  def test_ablation_at_site_is_what_downstream_sees(self):
    basis = _basis(3)
    _, captured = self.model.forward(self.params, self.inputs,
                                     interventions={"hidden_0": interventions.ablate(basis)},
                                     capture=["hidden_0"])
    np.testing.assert_allclose(np.asarray(captured["hidden_0"]) @ np.asarray(basis.vectors).T, 0.0,
                               atol=1e-5)

  def test_backward_only_keeps_outputs_bitwise_and_projects_site_gradient(self):
    basis = _basis(2)
    plain, _ = self.model.forward(self.params, self.inputs)
    hooked, _ = self.model.forward(self.params, self.inputs,
                                   interventions={"hidden_0": interventions.ablate(basis, backward_only=True)})
    np.testing.assert_array_equal(plain, hooked)

    def site_gradient(intervention):
      def loss(shift):
        chained = {"hidden_0": lambda a: intervention(a + shift) if intervention else a + shift}
        return jnp.sum(self.model.forward(self.params, self.inputs, interventions=chained)[0] ** 2)
      return jax.grad(loss)(jnp.zeros((6, WIDTH)))

    full = np.asarray(site_gradient(None), np.float64)
    projected = np.asarray(site_gradient(interventions.ablate(basis, backward_only=True)), np.float64)
    q = np.asarray(basis.vectors, np.float64)
    np.testing.assert_allclose(projected, full - (full @ q.T) @ q, atol=1e-4)

  def test_wrong_width_names_site_and_shapes(self):
    wrong = make_basis(np.random.default_rng(0).normal(size=(2, WIDTH + 1)), site="hidden_0")
    with self.assertRaisesRegex(SiteShapeError, r"site 'hidden_0' has width 13.*\(6, 12\)"):
      self.model.forward(self.params, self.inputs, interventions={"hidden_0": interventions.ablate(wrong)})

  def test_wrong_signature_names_the_site_and_act_to_act(self):
    for wrong, signature in ((lambda act, step: act, r"\(act, step\)"),
                             (lambda: None, r"\(\)")):
      with self.assertRaisesRegex(BadInputError, rf"site 'hidden_1' has signature {signature}; an "
                                  r"intervention takes one activation .*act -> act"):
        self.model.forward(self.params, self.inputs, interventions={"hidden_1": wrong})
    with self.assertRaisesRegex(BadInputError, r"site 'hidden_0' is a float \(3.0\), not a function"):
      self.model.forward(self.params, self.inputs, interventions={"hidden_0": 3.0})
    # Keyword-only extras with defaults, and *args, still take one activation.
    for fine in (lambda act, *, scale=2.0: act * scale, lambda *args: args[0]):
      self.model.forward(self.params, self.inputs, interventions={"hidden_1": fine})

  def test_unknown_site_names_site(self):
    with self.assertRaisesRegex(UnknownSiteError, r"hidden_9"):
      self.model.forward(self.params, self.inputs,
                         interventions={"hidden_9": interventions.steer(jnp.ones(WIDTH), 1.0)})


class CaptureBeforeInterventionsTest(parameterized.TestCase):
  """A capture reads a site after its interventions by default, or before them when asked."""

  @parameterized.named_parameters(
      ("nnx_mlp", lambda: models.mlp(64, (WIDTH, 8), 10), "hidden_0", (6, 8, 8)),
      ("penzai_mlp", lambda: models.penzai_mlp(64, (WIDTH, 8), 10), "hidden_0", (6, 8, 8)),
      ("gpt", lambda: models.gpt(models.GPTConfig(vocab_size=11, max_len=5, d_model=WIDTH,
                                                  num_layers=2, num_heads=2)),
       "blocks.1.resid_pre", (3, 5)),
      ("scanned_gpt", lambda: models.gpt(models.GPTConfig(vocab_size=11, max_len=5, d_model=WIDTH,
                                                          num_layers=2, num_heads=2,
                                                          scan_layers=True)),
       "blocks.1.resid_pre", (3, 5)),
  )
  def test_before_is_unablated_and_after_is_ablated(self, make_model, site, input_shape):
    model = make_model()
    params = model.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(2)
    inputs = (jnp.asarray(rng.integers(0, 11, size=input_shape), jnp.int32) if len(input_shape) == 2
              else jnp.asarray(rng.normal(size=input_shape), jnp.float32))
    basis = _basis(3)
    downstream = "blocks.1.resid_post" if site.startswith("blocks") else "hidden_1"
    forward = jax.jit(lambda p, x: model.forward(
        p, x, interventions={site: interventions.ablate(basis)}, capture=[site, downstream],
        capture_before=[site, downstream]))
    _, plain = jax.jit(lambda p, x: model.forward(p, x, capture=[site]))(params, inputs)
    _, acts = forward(params, inputs)
    self.assertEqual(set(acts), {site, downstream, before_interventions(site),
                                 before_interventions(downstream)})
    self.assertEqual(before_interventions(site), site + "@before")
    q = np.asarray(basis.vectors, np.float64)
    before = np.asarray(acts[before_interventions(site)], np.float64)
    after = np.asarray(acts[site], np.float64)
    # Two compiled programs: equal up to float32 rounding of O(1) activations.
    np.testing.assert_allclose(before, plain[site], atol=1e-5)
    np.testing.assert_array_equal(acts[before_interventions(downstream)], acts[downstream])
    self.assertGreater(np.abs(before @ q.T).max(), 1e-2)
    np.testing.assert_allclose(after @ q.T, 0.0, atol=1e-5)
    np.testing.assert_allclose(after, before - (before @ q.T) @ q, atol=1e-5)

  def test_gradient_flows_through_what_is_read(self):
    model = models.mlp(64, (WIDTH, 8), 10)
    params = model.init(jax.random.PRNGKey(0))
    inputs = _acts((6, 8, 8), seed=2)
    basis = _basis(3)
    ablated = {"hidden_0": interventions.ablate(basis)}

    def bias_gradient(before):
      def penalty(params):
        key = before_interventions("hidden_0") if before else "hidden_0"
        _, acts = model.forward(params, inputs, interventions=ablated,
                                capture_before=["hidden_0"] if before else (),
                                capture=() if before else ["hidden_0"])
        return 0.5 * jnp.sum(acts[key] ** 2)
      return np.asarray(jax.grad(penalty)(params)["hidden"]["0"]["bias"], np.float64)

    w1 = np.asarray(params["hidden"]["0"]["kernel"], np.float64)
    b1 = np.asarray(params["hidden"]["0"]["bias"], np.float64)
    hidden = np.maximum(np.asarray(inputs, np.float64).reshape(6, -1) @ w1 + b1, 0.0)
    q = np.asarray(basis.vectors, np.float64)
    # d/db1 of 0.5 |h|^2, h = relu(x W1 + b1), is sum_b h_b (h_b is 0 where the relu is off); read
    # after the ablation the penalty is 0.5 |h (I - Q^T Q)|^2, with gradient h (I - Q^T Q) there.
    np.testing.assert_allclose(bias_gradient(True), hidden.sum(0), rtol=1e-5, atol=1e-5)
    ablated_hidden = hidden - (hidden @ q.T) @ q
    np.testing.assert_allclose(bias_gradient(False), (ablated_hidden * (hidden > 0)).sum(0),
                               rtol=1e-5, atol=1e-5)

  def test_unknown_site_in_capture_before_is_named(self):
    model = models.mlp(64, (WIDTH, 8), 10)
    with self.assertRaisesRegex(UnknownSiteError, r"capture_before: unknown site\(s\) \['hidden_7'\]"):
      model.forward(model.init(jax.random.PRNGKey(0)), _acts((2, 64)), capture_before=["hidden_7"])


if __name__ == "__main__":
  absltest.main()
