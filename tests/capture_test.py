"""Capturing activation rows: values by hand, sharding, subsampling, token rows, datasets."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from landscape import data
from landscape import interventions
from landscape import models
from landscape.directions import capture
from landscape.directions import capture_dataset
from landscape.directions import make_basis
from landscape.sites import UnknownSiteError


def _digits_model():
  model = models.mlp(64, (16, 8), 10)
  return model, model.init(jax.random.PRNGKey(0))


def _assert_equal_up_to_float32_rounding(actual, expected):
  # Another split of the batch (over devices, or into batches) may sum each float32 matmul in
  # another order: a few ulps of the values' scale (rtol 1e-6 ~ 8 ulps; atol for values that cancel
  # to near zero). A wrong or misplaced row is off by the values' whole scale.
  expected = np.asarray(expected)
  np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


def _relu_layer(x, layer):
  kernel, bias = np.asarray(layer["kernel"], np.float64), np.asarray(layer["bias"], np.float64)
  return np.maximum(x @ kernel + bias, 0)


class CaptureValuesTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model, cls.params = _digits_model()
    cls.dataset = data.decoy_digits()
    cls.batch = cls.dataset.eval_sets["val_id"]

  def test_rows_equal_a_forward_pass_by_hand(self):
    captured = capture(self.model, self.params, self.batch, batch_size=100, source="val_id")
    x = self.batch["inputs"].reshape(len(self.batch["inputs"]), -1).astype(np.float64)
    hidden_0 = _relu_layer(x, self.params["hidden"]["0"])
    hidden_1 = _relu_layer(hidden_0, self.params["hidden"]["1"])
    np.testing.assert_allclose(captured["hidden_0"], hidden_0, atol=1e-5)
    np.testing.assert_allclose(captured["hidden_1"], hidden_1, atol=1e-5)
    self.assertEqual(captured["hidden_0"].dtype, np.float32)
    np.testing.assert_array_equal(captured.fields["concept"], self.batch["concept"])
    np.testing.assert_array_equal(captured.fields["example"], np.arange(len(x)))
    self.assertEqual(captured.fields["mask"].shape, self.batch["mask"].shape)
    self.assertNotIn("inputs", captured.fields)
    self.assertEqual((captured.sites, captured.rows_per_example, captured.source),
                     (("hidden_0", "hidden_1"), 1, "val_id"))

  def test_sharded_equals_unsharded(self):
    self.assertEqual(jax.device_count(), 8)
    kwargs = dict(sites=["hidden_1"], batch_size=30, max_rows=200, seed=4)
    sharded = capture(self.model, self.params, self.batch, **kwargs)
    single = capture(self.model, self.params, self.batch, devices=jax.devices()[:1], **kwargs)
    _assert_equal_up_to_float32_rounding(sharded["hidden_1"], single["hidden_1"])
    for name in single.fields:
      np.testing.assert_array_equal(sharded.fields[name], single.fields[name])

  def test_subsampling_keeps_the_right_rows(self):
    full = capture(self.model, self.params, self.batch, batch_size=64)
    sampled = capture(self.model, self.params, self.batch, batch_size=64, max_rows=50, seed=3)
    rows = sampled.fields["row"]
    self.assertLen(rows, 50)
    self.assertTrue(np.all(np.diff(rows) > 0))
    # The same batches on the same devices: the same arithmetic, so bitwise.
    np.testing.assert_array_equal(sampled["hidden_0"], full["hidden_0"][rows])
    np.testing.assert_array_equal(sampled.fields["labels"], self.batch["labels"][rows])
    again = capture(self.model, self.params, self.batch, batch_size=128, max_rows=50, seed=3)
    np.testing.assert_array_equal(again.fields["row"], rows)  # fixed by the seed, not the batching
    other = capture(self.model, self.params, self.batch, batch_size=64, max_rows=50, seed=4)
    self.assertFalse(np.array_equal(other.fields["row"], rows))

  def test_captures_see_the_value_after_interventions(self):
    basis = make_basis(np.random.default_rng(0).normal(size=(3, 16)), site="hidden_0")
    captured = capture(self.model, self.params, self.batch, sites=["hidden_0"],
                       interventions={"hidden_0": interventions.ablate(basis)})
    np.testing.assert_allclose(captured["hidden_0"] @ np.asarray(basis.vectors).T, 0.0, atol=1e-5)

  def test_dataset_stream_equals_capturing_the_drawn_batches(self):
    key = jax.random.PRNGKey(7)
    streamed = capture_dataset(self.model, self.params, self.dataset, num_batches=3, batch_size=20,
                               data_key=key, start_step=5, sites=["hidden_0"])
    drawn = [self.dataset.sample(self.dataset.arrays, key, jnp.asarray(5 + t), 20) for t in range(3)]
    joined = {name: np.concatenate([np.asarray(batch[name]) for batch in drawn]) for name in drawn[0]}
    direct = capture(self.model, self.params, joined, sites=["hidden_0"])
    _assert_equal_up_to_float32_rounding(streamed["hidden_0"], direct["hidden_0"])
    np.testing.assert_array_equal(streamed.fields["labels"], joined["labels"])
    single = capture_dataset(self.model, self.params, self.dataset, num_batches=3, batch_size=20,
                             data_key=key, start_step=5, sites=["hidden_0"],
                             devices=jax.devices()[:1])
    _assert_equal_up_to_float32_rounding(streamed["hidden_0"], single["hidden_0"])


class TokenRowsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = models.gpt(models.GPTConfig.tiny())
    cls.params = cls.model.init(jax.random.PRNGKey(0))
    cls.batch = {name: value[:40] for name, value in
                 data.marker_dataset(seq_len=6).eval_sets["val_id"].items()}
    cls.sites = ["embed", "blocks.1.mlp_out"]
    _, acts = cls.model.forward(cls.params, jnp.asarray(cls.batch["inputs"]), capture=cls.sites)
    cls.acts = {site: np.asarray(value) for site, value in acts.items()}

  def test_positions_are_flattened_example_major(self):
    captured = capture(self.model, self.params, self.batch, sites=self.sites, batch_size=16)
    self.assertEqual(captured.rows_per_example, 6)
    for site in self.sites:
      np.testing.assert_allclose(captured[site], self.acts[site].reshape(40 * 6, -1), atol=1e-5)
    example, position = captured.fields["example"], captured.fields["position"]
    np.testing.assert_array_equal(captured.fields["concept"], self.batch["concept"][example])
    np.testing.assert_array_equal(captured.fields["mask"], self.batch["mask"][example, position])
    np.testing.assert_array_equal(captured.fields["labels"], self.batch["labels"][example, position])

  def test_subsampled_token_rows_and_a_chosen_position(self):
    sampled = capture(self.model, self.params, self.batch, sites=self.sites, max_rows=37, seed=1)
    example, position = sampled.fields["example"], sampled.fields["position"]
    np.testing.assert_allclose(sampled["embed"], self.acts["embed"][example, position], atol=1e-5)
    last = capture(self.model, self.params, self.batch, sites=self.sites, position=-1)
    self.assertEqual(last.rows_per_example, 1)
    np.testing.assert_allclose(last["blocks.1.mlp_out"], self.acts["blocks.1.mlp_out"][:, -1],
                               atol=1e-5)
    np.testing.assert_array_equal(last.fields["position"], np.full(40, 5))
    np.testing.assert_array_equal(last.fields["labels"], self.batch["labels"][:, -1])


class CaptureErrorsTest(absltest.TestCase):

  def test_unknown_site_fails_before_compiling(self):
    model, params = _digits_model()
    batch = {"inputs": np.zeros((4, 8, 8), np.float32)}
    with self.assertRaisesRegex(UnknownSiteError, r"hidden_4.*hidden_0, hidden_1"):
      capture(model, params, batch, sites=["hidden_4"])

  def test_sites_with_different_layouts_are_named(self):
    model = models.cnn((8, 8), (4,), (16,), 10)
    params = model.init(jax.random.PRNGKey(0))
    batch = {"inputs": np.zeros((4, 8, 8), np.float32)}
    with self.assertRaisesRegex(ValueError, r"conv_0 \(2, 8, 8, 4\), hidden_0 \(2, 16\)"):
      capture(model, params, batch, sites=["conv_0", "hidden_0"])
    pixels = capture(model, params, batch, sites=["conv_0"])
    self.assertEqual(pixels["conv_0"].shape, (4 * 64, 4))

  def test_position_without_a_position_axis(self):
    model, params = _digits_model()
    with self.assertRaisesRegex(ValueError,
                                r"position=0 but the sites \['hidden_0'\] have no position"):
      capture(model, params, {"inputs": np.zeros((4, 8, 8), np.float32)}, sites=["hidden_0"],
              position=0)


if __name__ == "__main__":
  absltest.main()
