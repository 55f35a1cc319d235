"""Penzai models behind `Model`: the same interventions and captures as on the NNX models."""

import dataclasses
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest
from absl.testing import parameterized
from penzai import pz
from penzai.models.transformer.variants import gpt_neox
from penzai.models.transformer.variants import llamalike_common

from landscape import data
from landscape import directions
from landscape import interventions
from landscape import models
from landscape import objectives
from landscape import training
from landscape.directions import make_basis
from landscape.sites import SiteShapeError
from landscape.sites import Sites
from landscape.sites import UnknownSiteError

LLAMALIKE = llamalike_common.LlamalikeTransformerConfig(
    num_kv_heads=2, query_head_multiplier=1, embedding_dim=16, projection_dim=8, mlp_hidden_dim=24,
    num_decoder_blocks=2, vocab_size=20, mlp_variant="swiglu", tie_embedder_and_logits=True)
NEOX = gpt_neox.GPTNeoXTransformerConfig(
    num_attention_heads=2, embedding_dim=16, projection_dim=8, mlp_hidden_dim=24,
    num_decoder_blocks=2, vocab_size=20, activation_fn="gelu_exact", rope_subset_size=4,
    rope_wavelength=10_000.0, layernorm_epsilon=1e-5, parameter_dtype=jnp.float32,
    activation_dtype=jnp.float32)
TRANSFORMER_SITES = ("embed",) + tuple(f"blocks.{i}.{kind}" for i in range(2) for kind in
                                       ("attn_out", "mlp_hidden", "mlp_out", "resid_post"))


def _basis(rows, width, site, seed=0):
  return make_basis(np.random.default_rng(seed).normal(size=(rows, width)), site=site)


class PenzaiMLPEquivalenceTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.nnx_model = models.mlp(64, (16, 8), 10)
    cls.penzai_model = models.penzai_mlp(64, (16, 8), 10)
    cls.params = cls.nnx_model.init(jax.random.PRNGKey(0))
    cls.inputs = jnp.asarray(np.random.default_rng(1).normal(size=(6, 8, 8)), jnp.float32)

  def test_same_params_layout_sites_and_links(self):
    penzai_params = self.penzai_model.init(jax.random.PRNGKey(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(penzai_params, self.params)
    self.assertEqual(self.penzai_model.site_names, self.nnx_model.site_names)
    self.assertEqual(dict(self.penzai_model.site_links), dict(self.nnx_model.site_links))

  @parameterized.named_parameters(
      ("plain", lambda: {}, False),
      ("ablate", lambda: {"hidden_0": interventions.ablate(_basis(3, 16, "hidden_0"))}, True),
      ("steer", lambda: {"hidden_1": interventions.steer(jnp.linspace(-1.0, 1.0, 8), 2.5)}, True),
      ("backward_only_and_ablate", lambda: {
          "hidden_0": interventions.ablate(_basis(2, 16, "hidden_0"), backward_only=True),
          "hidden_1": interventions.ablate(_basis(1, 8, "hidden_1"))}, True),
  )
  def test_same_outputs_and_captures(self, make_interventions, changes_outputs):
    chosen = make_interventions()

    def run(model, params):
      return jax.jit(lambda p, x: model.forward(p, x, interventions=chosen, capture="all"))(
          params, self.inputs)

    nnx_outputs, nnx_acts = run(self.nnx_model, self.params)
    penzai_outputs, penzai_acts = run(self.penzai_model, self.params)
    chex.assert_trees_all_close(penzai_outputs, nnx_outputs, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(penzai_acts, nnx_acts, atol=1e-5, rtol=1e-5)
    plain_outputs, _ = self.nnx_model.forward(self.params, self.inputs)
    change = float(jnp.max(jnp.abs(penzai_outputs - plain_outputs)))
    if changes_outputs:
      self.assertGreater(change, 1e-3)
    else:
      self.assertEqual(change, 0.0)

  def test_same_gradients_through_interventions(self):
    chosen = {"hidden_0": interventions.ablate(_basis(3, 16, "hidden_0"), backward_only=True)}

    def loss(model):
      return lambda p: jnp.sum(model.forward(p, self.inputs, interventions=chosen)[0] ** 2)

    chex.assert_trees_all_close(jax.grad(loss(self.penzai_model))(self.params),
                                jax.grad(loss(self.nnx_model))(self.params), atol=1e-5, rtol=1e-5)

  def test_training_loop_treats_it_like_the_nnx_model(self):
    config = training.loop_config()
    config.update(steps=10, batch_size=32, log_every=10, eval_every=0, checkpoint_every=0,
                  steps_per_call=10, tensorboard=False)
    dataset = data.digits()
    runs = []
    # The penzai model starts from the NNX model's initial params, so the runs must agree.
    for model in (self.nnx_model, dataclasses.replace(self.penzai_model, init=self.nnx_model.init)):
      runs.append(training.train(config, tempfile.mkdtemp(), model=model,
                                 objective=objectives.compose(objectives.cross_entropy()),
                                 optimizer=optax.adam(1e-2), dataset=dataset))
    chex.assert_trees_all_close(training.fetch(runs[1].state.params),
                                training.fetch(runs[0].state.params), atol=1e-5, rtol=1e-4)

  def test_directions_capture_works_unchanged(self):
    batch = {"inputs": np.asarray(self.inputs), "concept": np.arange(6) % 2}
    nnx_rows = directions.capture(self.nnx_model, self.params, batch)
    penzai_rows = directions.capture(self.penzai_model, self.params, batch)
    chex.assert_trees_all_close(penzai_rows.acts, nnx_rows.acts, atol=1e-5, rtol=1e-5)


class PenzaiTransformerTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = models.penzai_transformer(LLAMALIKE)
    cls.params = jax.jit(cls.model.init)(jax.random.PRNGKey(0))
    cls.tokens = jnp.asarray(np.random.default_rng(0).integers(0, 20, (3, 7)), jnp.int32)

  def test_sites_shapes_and_params(self):
    self.assertEqual(self.model.site_names, TRANSFORMER_SITES)
    widths = self.model.site_widths(self.params, self.tokens)
    self.assertEqual(widths["blocks.0.mlp_hidden"], 24)
    self.assertEqual(widths["blocks.1.resid_post"], 16)
    self.assertEqual(self.params["transformer"]["embedder.embeddings"].shape, (20, 16))
    outputs, acts = self.model.forward(self.params, self.tokens, capture=["blocks.1.resid_post"])
    chex.assert_shape(outputs, (3, 7, 20))
    chex.assert_shape(acts["blocks.1.resid_post"], (3, 7, 16))

  def test_site_layers_are_identity_without_sites(self):
    built = llamalike_common.build_llamalike_transformer(LLAMALIKE, init_base_rng=jax.random.PRNGKey(0))
    instrumented = models.instrument_transformer(built)
    named = pz.nx.wrap(self.tokens).tag("batch", "seq")
    plain = built(named).unwrap("batch", "seq", "vocabulary")
    np.testing.assert_array_equal(instrumented(named).unwrap("batch", "seq", "vocabulary"), plain)
    np.testing.assert_array_equal(self.model.forward(self.params, self.tokens)[0], plain)

  def test_resid_post_is_the_stream_after_the_block(self):
    _, acts = self.model.forward(self.params, self.tokens, capture="all")
    # A llama-like block adds its attention and MLP outputs to the stream.
    np.testing.assert_allclose(acts["blocks.1.resid_post"],
                               acts["blocks.0.resid_post"] + acts["blocks.1.attn_out"]
                               + acts["blocks.1.mlp_out"], atol=1e-5)

  def test_ablation_at_resid_post_leaves_no_component_and_changes_logits(self):
    basis = _basis(4, 16, "blocks.0.resid_post")
    ablation = {"blocks.0.resid_post": interventions.ablate(basis)}
    plain_logits, plain_acts = self.model.forward(self.params, self.tokens,
                                                  capture=["blocks.0.resid_post"])
    logits, acts = jax.jit(lambda p, t: self.model.forward(
        p, t, interventions=ablation, capture=["blocks.0.resid_post", "blocks.1.resid_post"]))(
            self.params, self.tokens)
    q = np.asarray(basis.vectors, np.float64)
    np.testing.assert_allclose(np.asarray(acts["blocks.0.resid_post"]) @ q.T, 0.0, atol=1e-5)
    plain = np.asarray(plain_acts["blocks.0.resid_post"], np.float64)
    np.testing.assert_allclose(acts["blocks.0.resid_post"], plain - (plain @ q.T) @ q, atol=1e-5)
    self.assertGreater(float(jnp.max(jnp.abs(logits - plain_logits))), 1e-3)

  def test_steer_shifts_the_site_by_alpha_v_and_changes_logits(self):
    vector = jnp.asarray(np.random.default_rng(3).normal(size=24), jnp.float32)
    plain_logits, plain_acts = self.model.forward(self.params, self.tokens,
                                                  capture=["blocks.1.mlp_hidden"])
    logits, acts = self.model.forward(
        self.params, self.tokens,
        interventions={"blocks.1.mlp_hidden": interventions.steer(vector, 3.0)},
        capture=["blocks.1.mlp_hidden"])
    np.testing.assert_allclose(acts["blocks.1.mlp_hidden"] - plain_acts["blocks.1.mlp_hidden"],
                               np.broadcast_to(3.0 * np.asarray(vector), (3, 7, 24)), atol=1e-5)
    self.assertGreater(float(jnp.max(jnp.abs(logits - plain_logits))), 1e-3)

  def test_token_captures_and_decodability(self):
    batch = {"inputs": np.asarray(self.tokens), "concept": np.asarray(self.tokens[:, 0] % 2)}
    rows = directions.capture(self.model, self.params, batch, sites=["embed", "blocks.0.resid_post"])
    self.assertEqual(rows["embed"].shape, (21, 16))
    self.assertEqual(rows.rows_per_example, 7)

  def test_gpt_neox_variant_instruments_and_intervenes(self):
    model = models.penzai_transformer(NEOX)
    self.assertEqual(model.site_names, TRANSFORMER_SITES)
    params = model.init(jax.random.PRNGKey(1))
    basis = _basis(2, 16, "blocks.0.resid_post")
    logits, acts = model.forward(params, self.tokens,
                                 interventions={"blocks.0.resid_post": interventions.ablate(basis)},
                                 capture=["blocks.0.resid_post"])
    chex.assert_shape(logits, (3, 7, 20))
    np.testing.assert_allclose(np.asarray(acts["blocks.0.resid_post"]) @ np.asarray(basis.vectors).T,
                               0.0, atol=1e-5)

  def test_bad_sites_and_widths(self):
    with self.assertRaisesRegex(UnknownSiteError, r"blocks\.7\.resid_post.*embed"):
      self.model.forward(self.params, self.tokens,
                         interventions={"blocks.7.resid_post": interventions.steer(jnp.ones(16), 1.0)})
    wrong = interventions.ablate(_basis(2, 24, "blocks.0.resid_post"))
    with self.assertRaisesRegex(SiteShapeError,
                                r"site 'blocks\.0\.resid_post' has width 24.*\(3, 7, 16\)"):
      self.model.forward(self.params, self.tokens, interventions={"blocks.0.resid_post": wrong})
    with self.assertRaisesRegex(directions.BasisError,
                                r"blocks\.0\.mlp_hidden.*width 16.*\(3, 7, 24\)"):
      directions.check_bases(self.model, self.params, self.tokens,
                             {"blocks.0.mlp_hidden": _basis(2, 16, "blocks.0.mlp_hidden")})

  def test_site_layer_checks_its_feature_axis_and_names(self):
    layer = models.site_layer("probe", "channels", leading_axes=("batch",))
    named = pz.nx.wrap(jnp.zeros((2, 3))).tag("batch", "features")
    with self.assertRaisesRegex(SiteShapeError, r"site 'probe'.*'channels'.*features"):
      layer(named, landscape_sites=Sites())
    doubled = pz.nn.Sequential([layer, layer])
    with self.assertRaisesRegex(ValueError, r"\['probe'\] appear more than once"):
      models.penzai_site_names(doubled)
    with self.assertRaisesRegex(ValueError, r"use_layer_stack"):
      stacked = llamalike_common.build_llamalike_transformer(
          dataclasses.replace(LLAMALIKE, use_layer_stack=True), init_base_rng=None)
      models.instrument_transformer(stacked)


if __name__ == "__main__":
  absltest.main()
