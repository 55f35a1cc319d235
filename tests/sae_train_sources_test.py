"""The SAE experiment's other sources: activations passed in memory, and the site of a model restored
from a landscape training run's checkpoint (with its CE and KL recovered)."""

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from configs import train as train_config
from configs import train_sae as train_sae_config
from landscape import supervised
from landscape import train_sae
from landscape.training import ConfigError


def _one_group(config):
  """``config`` with only its TopK group, at one k: one SAE, a smaller program."""
  config.unlock()
  for name in [name for name in config.saes.keys() if name != "topk"]:
    del config.saes[name]
  config.lock()
  config.saes.topk.k = (2,)
  return config


class InMemoryTest(absltest.TestCase):

  def test_in_memory_activations(self):
    acts = np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32)
    config = _one_group(train_sae_config.get_config("smoke"))
    config.source = "arrays"
    config.arrays.num_eval = 80
    config.saes.topk.d_sae = 16
    config.steps = 5
    config.eval_every = 0
    config.checkpoint_every = 0
    result = train_sae.run(config, tempfile.mkdtemp(), activations=acts)
    self.assertEqual(result.summary["source"]["num_train"], 320)
    self.assertEqual(result.saes["topk/seed0"].d_in, 8)
    with self.assertRaisesRegex(ConfigError, "config.source='planted'"):
      config.source = "planted"
      train_sae.run(config, tempfile.mkdtemp(), activations=acts)


class CheckpointedModelTest(absltest.TestCase):

  def test_sae_on_a_trained_models_site(self):
    supervised_config = train_config.get_config("smoke")
    supervised_config.steps = 10
    supervised_config.eval_every = 0
    supervised_config.checkpoint_every = 10
    supervised_config.tensorboard = False
    model_dir = tempfile.mkdtemp()
    trained = supervised.run(supervised_config, model_dir)
    config = _one_group(train_sae_config.get_config("smoke"))
    config.steps = 10
    config.eval_every = 0
    config.checkpoint_every = 0
    config.model.checkpoint = model_dir
    source = train_sae.make_source(config)
    self.assertIn("step 10 run 0", source.info["params"])
    dataset = supervised.make_dataset(config.data)
    model = supervised.make_model(config.model, dataset)
    inputs = jnp.asarray(dataset.eval_sets["val"]["inputs"])
    final = jax.tree_util.tree_map(lambda leaf: leaf[0], trained.state.params)
    _, restored = model.forward(final, inputs, capture=["hidden_1"])
    _, initial = model.forward(model.init(jax.random.key(0)), inputs, capture=["hidden_1"])
    # The activations are the checkpointed model's (the same params, the same program up to
    # rounding), not the initial model's.
    np.testing.assert_allclose(source.eval_acts, restored["hidden_1"], rtol=1e-5, atol=1e-6)
    self.assertFalse(np.allclose(source.eval_acts, initial["hidden_1"], atol=1e-2))
    result = train_sae.run(config, tempfile.mkdtemp())
    entry = result.summary["saes"][0]
    self.assertTrue(np.isfinite(entry["ce_recovered"]) and np.isfinite(entry["kl_recovered"]))
    self.assertIn("ce_recovered", result.summary["saes"][0])
    config.model.hidden_sizes = (32,)
    config.model.site = "hidden_0"
    with self.assertRaisesRegex(ConfigError, r"config.model.hidden_sizes=\(32,\)"):
      train_sae.make_source(config)
    config.model.hidden_sizes = (64, 64)
    config.model.checkpoint_step = 7
    with self.assertRaisesRegex(ConfigError, "config.model.checkpoint_step=7"):
      train_sae.make_source(config)


if __name__ == "__main__":
  absltest.main()
