"""A live SAE during training: it follows the model's activations where a frozen one falls behind,
its decoder feeds the dictionary transforms through a span refresher, and resume is bitwise."""

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from landscape import data
from landscape import models
from landscape import objectives
from landscape import sae as sae_lib
from landscape import training
from landscape import transforms
from landscape.sites import BadInputError

SITE = "hidden_0"
EVERY = 10
SELECTED = 8  # features whose span the transforms see
STEPS = 100


def _config(steps, checkpoint_every=0):
  config = training.loop_config()
  config.steps = steps
  config.batch_size = 64
  config.eval_every = 0
  config.checkpoint_every = checkpoint_every
  config.steps_per_call = 20
  config.log_every = 20
  config.tensorboard = False
  config.async_checkpoints = False
  return config


class LiveSAETest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dataset = data.digits()
    cls.model = models.mlp(64, (32,), 10)
    options = dict(model=cls.model, site=SITE, data=cls.dataset, d_sae=64, k=4, init_steps=60,
                   batch_size=128, learning_rate=3e-3)
    cls.live = sae_lib.live_sae("live", every=EVERY, steps=4, **options)
    cls.frozen = sae_lib.live_sae("frozen", every=0, **options)
    # The live SAE's decoder as a dictionary for the transforms: its span refreshed right after it.
    template = sae_lib.init_sae(jax.random.key(0), "topk", 32, 64, k=4)
    cls.directions = sae_lib.feature_directions(template, cls.model.site_links, site=SITE,
                                                features=np.arange(SELECTED), extra_arg="span")
    cls.span = transforms.span_refresher(cls.directions, every=EVERY,
                                         source=cls.live.decoder_source())
    optimizer = optax.chain(transforms.attribute(cls.directions), optax.adam(1e-2))
    cls.train = staticmethod(lambda config, workdir: training.train(
        config, workdir, model=cls.model, objective=objectives.compose(objectives.cross_entropy()),
        optimizer=optimizer, dataset=cls.dataset, refreshers=[cls.live, cls.frozen, cls.span],
        optimizer_extra_args=lambda state: {"span": state.refreshed["span"]}))
    cls.result = cls.train(_config(STEPS, checkpoint_every=STEPS // 2), tempfile.mkdtemp())
    first_run = lambda tree: jax.tree_util.tree_map(lambda leaf: leaf[0], tree)
    cls.params = first_run(cls.result.state.params)
    cls.refreshed = first_run(cls.result.state.refreshed)

  def _fve(self, name):
    inputs = jnp.asarray(self.dataset.eval_sets["val"]["inputs"])
    _, acts = self.model.forward(self.params, inputs, capture=[SITE])
    value = self.refreshed[name]
    return float(sae_lib.fraction_variance_explained(acts[SITE], value.sae(acts[SITE])))

  def test_live_sae_follows_the_training_model_and_a_frozen_one_does_not(self):
    live, frozen = self._fve("live"), self._fve("frozen")
    # The frozen SAE reconstructs the initial model's activations; the trained model's hidden layer
    # has moved away from them. Measured after 100 steps: live 0.71, frozen 0.01.
    self.assertGreater(live, 0.6, (live, frozen))
    self.assertGreater(live - frozen, 0.4, (live, frozen))
    self.assertEqual(int(self.refreshed["live"].refreshed_step), STEPS - EVERY)
    self.assertEqual(int(self.refreshed["frozen"].refreshed_step), -1)

  def test_span_refresher_tracks_the_live_decoder(self):
    decoder = np.asarray(self.refreshed["live"].sae.W_dec, np.float64)[:SELECTED]
    _, _, vt = np.linalg.svd(decoder, full_matrices=False)
    expected = vt.T @ vt
    basis = np.asarray(self.refreshed["span"][SITE], np.float64)
    # Float32 SVD in the step against float64 here: projectors agree to a few float32 ulps times
    # the conditioning of 8 unit rows.
    np.testing.assert_allclose(basis.T @ basis, expected, atol=2e-4)

  def test_attribution_reports_along_the_dictionary(self):
    summary = self.result.summary
    share = np.asarray(summary["transform/hidden_0/total_share"])
    # 8 of the site's 32 dimensions: part of each gradient, neither none nor all of it.
    self.assertTrue(np.all((share > 0) & (share < 1)), share)

  def test_resume_is_bitwise(self):
    workdir = tempfile.mkdtemp()
    self.train(_config(STEPS // 2, checkpoint_every=STEPS // 2), workdir)
    resumed = self.train(_config(STEPS, checkpoint_every=STEPS // 2), workdir)
    self.assertEqual(training.params_digest(resumed.state.refreshed),
                     training.params_digest(self.result.state.refreshed))
    self.assertEqual(resumed.summary["digest"], self.result.summary["digest"])

  def test_bad_arguments_are_named(self):
    with self.assertRaisesRegex(BadInputError, "every=-1"):
      sae_lib.live_sae("x", model=self.model, site=SITE, data=self.dataset, every=-1, d_sae=8, k=2)
    with self.assertRaisesRegex(BadInputError, "nope"):
      sae_lib.live_sae("x", model=self.model, site="nope", data=self.dataset, every=1, d_sae=8,
                       k=2)
    with self.assertRaisesRegex(BadInputError, "d_sae"):
      sae_lib.live_sae("x", model=self.model, site=SITE, data=self.dataset, every=1)
    with self.assertRaisesRegex(BadInputError, "k=40"):
      sae_lib.live_sae("x", model=self.model, site=SITE, data=self.dataset, every=1, d_sae=8,
                       k=40)


if __name__ == "__main__":
  absltest.main()
