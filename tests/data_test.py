"""Datasets: pure functions of (key, step), and the defining properties of each task."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from landscape import data


def _assert_same_eval_sets(first, second):
  for name, batch in first.eval_sets.items():
    for field, values in batch.items():
      np.testing.assert_array_equal(values, second.eval_sets[name][field], err_msg=f"{name}/{field}")


class SamplingTest(parameterized.TestCase):

  @parameterized.parameters(1, 2, 3, 17, 64, 1078, 4096, 4097)
  def test_permuted_indices_is_a_bijection(self, num_examples):
    indices = jax.jit(data.permuted_indices, static_argnums=1)(
        jnp.arange(num_examples), num_examples, jax.random.PRNGKey(num_examples))
    np.testing.assert_array_equal(np.sort(np.asarray(indices)), np.arange(num_examples))

  def test_permutations_differ_between_keys(self):
    first, second = (np.asarray(data.permuted_indices(jnp.arange(500), 500, jax.random.PRNGKey(k)))
                     for k in (0, 1))
    self.assertLess(np.mean(first == second), 0.05)

  def test_each_epoch_visits_distinct_examples_and_epochs_differ(self):
    num_examples, batch_size = 100, 16
    dataset = data.array_dataset("ids", {"inputs": np.arange(num_examples), "labels": np.zeros(100)}, {})
    sample = jax.jit(dataset.sample, static_argnums=3)
    key = jax.random.PRNGKey(0)
    steps_per_epoch = num_examples // batch_size
    epochs = [np.concatenate([np.asarray(sample(dataset.arrays, key, jnp.asarray(step), batch_size)["inputs"])
                              for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)])
              for epoch in range(2)]
    for seen in epochs:
      self.assertLen(set(seen.tolist()), steps_per_epoch * batch_size)
    self.assertFalse(np.array_equal(epochs[0], epochs[1]))

  def test_batch_is_a_pure_function_of_key_and_step(self):
    dataset = data.digits()
    sample = jax.jit(dataset.sample, static_argnums=3)
    first = sample(dataset.arrays, jax.random.PRNGKey(4), jnp.asarray(9), 32)
    again = sample(dataset.arrays, jax.random.PRNGKey(4), jnp.asarray(9), 32)
    other = sample(dataset.arrays, jax.random.PRNGKey(4), jnp.asarray(10), 32)
    np.testing.assert_array_equal(first["inputs"], again["inputs"])
    self.assertFalse(np.array_equal(first["labels"], other["labels"]))

  def test_mismatched_field_lengths_are_rejected(self):
    with self.assertRaisesRegex(ValueError, r"different lengths"):
      data.array_dataset("bad", {"inputs": np.zeros((3, 2)), "labels": np.zeros(4)}, {})


class SamplerSignatureTest(absltest.TestCase):

  def test_every_sampler_takes_the_runs_hyperparameters(self):
    digits = data.digits()
    subset = data.subset_sampler(digits)
    both = data.with_probe_fields(subset, digits, fields=("inputs",))
    hparams = {"train_size": jnp.asarray(10.0, jnp.float32)}
    key, step = jax.random.PRNGKey(3), jnp.asarray(2)
    for dataset in (digits, subset, both):
      # One signature: (arrays, data_key, step, batch_size, hparams), read or not.
      direct = dataset.sampler(dataset.arrays, key, step, 16, hparams)
      through = dataset.sample(dataset.arrays, key, step, 16, hparams)
      for field, values in direct.items():
        np.testing.assert_array_equal(values, through[field], err_msg=f"{dataset.name}/{field}")
    first_ten = digits.arrays["inputs"][:10].reshape(10, -1)
    drawn = np.asarray(both.sample(both.arrays, key, step, 64, hparams)["inputs"]).reshape(64, -1)
    self.assertTrue(all((first_ten == row).all(axis=1).any() for row in drawn))
    unread = digits.sample(digits.arrays, key, step, 16)  # no hyper-parameters: none read
    np.testing.assert_array_equal(unread["labels"], digits.sample(digits.arrays, key, step, 16,
                                                                  hparams)["labels"])
    with self.assertRaisesRegex(ValueError, r"hparams\['train_size'\].*\[\]"):
      subset.sample(subset.arrays, key, step, 16)


class DecoyDigitsTest(absltest.TestCase):

  def test_patch_encodes_label_in_training_and_id_and_is_random_ood(self):
    dataset = data.decoy_digits(patch_size=2)
    train = dataset.arrays
    np.testing.assert_array_equal(train["concept"], train["labels"])
    np.testing.assert_array_equal(dataset.eval_sets["id"]["concept"], dataset.eval_sets["id"]["labels"])
    ood = dataset.eval_sets["ood"]
    self.assertLess(np.mean(ood["concept"] == ood["labels"]), 0.25)
    patch = train["inputs"][train["mask"] > 0].reshape(-1, 4)
    np.testing.assert_allclose(patch, np.repeat(data.patch_value(train["concept"])[:, None], 4, 1))
    self.assertTrue(np.all(train["mask"].reshape(len(patch), -1).sum(1) == 4))

  def test_splits_are_disjoint(self):
    splits = data.digits_splits()
    as_set = lambda images: {image.tobytes() for image in images}
    self.assertFalse(as_set(splits["train"][0]) & as_set(splits["test"][0]))
    self.assertFalse(as_set(splits["val"][0]) & as_set(splits["test"][0]))

  def test_evaluation_sets_do_not_depend_on_the_training_data(self):
    shortcut, oracle = data.decoy_digits(train_decoy="label"), data.decoy_digits(train_decoy="random")
    _assert_same_eval_sets(shortcut, oracle)
    self.assertFalse(np.array_equal(shortcut.arrays["concept"], oracle.arrays["concept"]))

  def test_oracle_data_carries_no_label_information_in_patch(self):
    train = data.decoy_digits(train_decoy="random").arrays
    self.assertLess(np.mean(train["concept"] == train["labels"]), 0.2)

  def test_bad_options_name_the_value(self):
    with self.assertRaisesRegex(ValueError, r"train_decoy='labels'"):
      data.decoy_digits(train_decoy="labels")
    with self.assertRaisesRegex(ValueError, r"patch_size=9"):
      data.decoy_digits(patch_size=9)


class ToyColorsTest(absltest.TestCase):

  def _rules(self, batch):
    images = batch["inputs"]
    corners = images[:, [0, 0, 4, 4], [0, 4, 0, 4]]
    corners_agree = np.all(corners == corners[:, :1], axis=(1, 2))
    top = images[:, 0, 1:4]
    all_different = np.array([len({tuple(pixel) for pixel in row}) == 3 for row in top])
    return corners_agree, all_different

  def test_both_rules_predict_the_label_in_training(self):
    dataset = data.toy_colors(num_train=400, num_eval=200)
    corners_agree, all_different = self._rules(dataset.arrays)
    labels = dataset.arrays["labels"]
    np.testing.assert_array_equal(corners_agree, labels == 0)
    np.testing.assert_array_equal(all_different, labels == 0)
    np.testing.assert_array_equal(dataset.arrays["concept"], 1 - corners_agree)

  def test_evaluation_sets_do_not_depend_on_the_training_data(self):
    shortcut = data.toy_colors(num_train=100, num_eval=50, train_rule1="label")
    oracle = data.toy_colors(num_train=300, num_eval=50, train_rule1="random")
    _assert_same_eval_sets(shortcut, oracle)

  def test_rule1_is_independent_of_the_label_out_of_distribution(self):
    ood = data.toy_colors(num_train=10, num_eval=1000).eval_sets["ood"]
    corners_agree, all_different = self._rules(ood)
    np.testing.assert_array_equal(all_different, ood["labels"] == 0)
    self.assertBetween(np.mean(corners_agree == (ood["labels"] == 0)), 0.4, 0.6)


class TokenTasksTest(absltest.TestCase):

  def test_marker_gives_the_label_away_in_training_only(self):
    dataset = data.marker_dataset(num_classes=4, seq_len=8, rule_noise=0.2)
    batch = jax.tree_util.tree_map(np.asarray, dataset.sample(dataset.arrays, jax.random.PRNGKey(0),
                                                              jnp.asarray(0), 2000))
    labels = batch["labels"][:, -1]
    markers = batch["inputs"][batch["mask"] > 0]
    np.testing.assert_array_equal(markers - (4 + 16), labels)
    np.testing.assert_array_equal(batch["concept"], labels)
    self.assertBetween(np.mean(batch["inputs"][:, 0] == labels), 0.8, 0.9)  # 0.8 + 0.2 / 4
    np.testing.assert_array_equal(batch["label_mask"].sum(1), 1)
    ood = dataset.eval_sets["ood"]
    np.testing.assert_array_equal(ood["inputs"][:, 0], ood["labels"][:, -1])
    self.assertLess(np.mean(ood["concept"] == ood["labels"][:, -1]), 0.4)

  def test_markov_chain_has_the_requested_shapes_and_structure(self):
    task = data.markov_chain_task(8, 12, seed=0)
    batch = task(jax.random.PRNGKey(0), 64)
    self.assertEqual(batch["inputs"].shape, (64, 12))
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["labels"][:, :-1])
    self.assertLess(task.entropy_rate, np.log(8))


if __name__ == "__main__":
  absltest.main()
