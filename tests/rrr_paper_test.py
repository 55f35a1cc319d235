"""The Toy Colors sample-efficiency study in the settings of Ross et al.'s script (dtak/rrr)."""

import math
import os
import tempfile
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from configs import block_vs_reshape as flagship_config
from landscape import block_vs_reshape
from landscape import data
from landscape import models
from landscape import objectives
from landscape import training
from landscape.block_vs_reshape import _run
from landscape.block_vs_reshape import _sample_efficiency
from landscape.sites import BadInputError

CORNERS = ((0, 0), (0, 4), (4, 0), (4, 4))


def _class_statistics(images: np.ndarray, labels: np.ndarray, label: int) -> dict[str, float]:
  """Per-class frequencies of the corner and top-middle colour patterns (images (N, 5, 5, 3))."""
  pixels = images[labels == label]
  same = lambda a, b: np.all(pixels[:, a[0], a[1]] == pixels[:, b[0], b[1]], axis=-1)
  top = [pixels[:, 0, col] for col in (1, 2, 3)]
  pairs = [np.all(top[i] == top[j], axis=-1) for i, j in ((0, 1), (0, 2), (1, 2))]
  return dict(
      corners_all_equal=np.mean(same(CORNERS[0], CORNERS[3]) & same(CORNERS[1], CORNERS[3])
                                & same(CORNERS[2], CORNERS[3])),
      top_right_equals_bottom_left=np.mean(same(CORNERS[1], CORNERS[2])),
      top_left_equals_bottom_right=np.mean(same(CORNERS[0], CORNERS[3])),
      top_middle_all_different=np.mean(~(pairs[0] | pairs[1] | pairs[2])),
      top_middle_all_same=np.mean(pairs[0] & pairs[1]),
      bottom_right_is_red=np.mean(np.all(pixels[:, 4, 4] == (255, 0, 0), axis=-1)))


class ReferenceGeneratorTest(absltest.TestCase):

  def test_class_statistics_follow_the_reference_rules(self):
    # The reference (rrr/toy_colors.py), written out. Class 0: the other corners copy the
    # bottom-right one (a uniform colour); a random top-middle pixel is redrawn until all three
    # differ. Class 1: with probability 1/2 the top-right corner is redrawn until it differs from
    # the bottom-left, else the top-left until it differs from the bottom-right, so each diagonal
    # pair is equal with probability 1/2 x 1/4 = 1/8; a random top-middle pixel is redrawn until two
    # repeat, which from three different colours always leaves exactly two, so all three are the
    # same only when drawn so: 4/64 = 1/16.
    expected = {
        0: dict(corners_all_equal=1.0, top_middle_all_different=1.0, top_middle_all_same=0.0,
                bottom_right_is_red=1 / 4),
        1: dict(corners_all_equal=0.0, top_right_equals_bottom_left=1 / 8,
                top_left_equals_bottom_right=1 / 8, top_middle_all_different=0.0,
                top_middle_all_same=1 / 16, bottom_right_is_red=1 / 4),
    }
    count = 16000
    rng = np.random.default_rng(0)
    labels = rng.integers(2, size=count)
    images = data.toy_color_images(labels, rng, generator="reference", input_scale="raw")
    self.assertEqual(images["inputs"].dtype, np.float32)
    np.testing.assert_array_equal(np.unique(images["inputs"]), [0.0, 128.0, 255.0])
    for label, rules in expected.items():
      statistics = _class_statistics(images["inputs"], labels, label)
      for name, probability in rules.items():
        # 5 binomial standard errors on about count / 2 images (at least 0.002 for p in {0, 1}).
        tolerance = max(5 * math.sqrt(probability * (1 - probability) / (count / 2)), 2e-3)
        self.assertAlmostEqual(statistics[name], probability, delta=tolerance,
                               msg=f"class {label}: {name}")
    # The statistic tells the two generators apart: landscape's class 1 is uniform over the
    # rule-breaking corner patterns (252 of 256), where a diagonal pair is equal in 60 of them.
    landscape = data.toy_color_images(labels, np.random.default_rng(1), input_scale="raw")
    self.assertAlmostEqual(_class_statistics(landscape["inputs"], labels, 1)[
        "top_right_equals_bottom_left"], 60 / 252, delta=0.03)

  def test_unit_scale_is_the_raw_palette_over_255_up_to_128(self):
    rng = np.random.default_rng(2)
    labels = rng.integers(2, size=50)
    raw = data.toy_color_images(labels, np.random.default_rng(3), input_scale="raw")["inputs"]
    unit = data.toy_color_images(labels, np.random.default_rng(3))["inputs"]
    np.testing.assert_array_equal(np.where(raw == 128, 127.5, raw) / 255.0, unit)

  def test_bad_generator_names_the_field(self):
    with self.assertRaisesRegex(BadInputError, r"generator='paper'"):
      data.toy_color_images(np.zeros(2, np.int32), np.random.default_rng(0), generator="paper")


class ScheduleTest(parameterized.TestCase):

  @parameterized.parameters(10, 12, 59, 255, 256, 282, 1077, 10000)
  def test_steps_and_batches_are_the_references(self, size):
    # The reference: int((10000 / float(l)) * 32) epochs, batch min(256, l), ceil(l / batch)
    # batches a pass, batch i the slice [i * batch, (i + 1) * batch) of the first l examples.
    epochs = int((10000 / float(size)) * 32)
    batch = min(256, size)
    num_batches = int(np.ceil(size / batch))
    slices = [range(size)[index * batch:(index + 1) * batch] for index in range(num_batches)]
    schedule = _sample_efficiency.epoch_schedule(size)
    self.assertEqual((schedule.epochs, schedule.batch_size, schedule.num_batches, schedule.steps),
                     (epochs, batch, num_batches, epochs * num_batches))
    self.assertEqual(schedule.remainder, len(slices[-1]) % batch)
    self.assertEqual([len(s) for s in slices[:-1]], [batch] * (num_batches - 1))

  def test_every_grid_size_spends_about_the_same_examples(self):
    for size in np.logspace(1, 4, 32).astype(int):
      schedule = _sample_efficiency.epoch_schedule(int(size))
      self.assertEqual(schedule.epochs, int((10000 / float(size)) * 32))
      self.assertBetween(schedule.epochs * size, 320000 - size, 320000)

  def test_figure_rule_is_strictly_above(self):
    sizes = np.array([10.0, 20.0, 40.0])
    accuracy = np.array([0.7, 0.8, 0.95])
    self.assertEqual(_sample_efficiency.first_size_above(sizes, accuracy, 0.8), 40.0)
    self.assertEqual(_sample_efficiency.first_size_above(sizes, accuracy, 0.79), 20.0)
    self.assertIsNone(_sample_efficiency.first_size_above(sizes, accuracy, 0.95))


class PenaltyTest(absltest.TestCase):

  def _loss(self, objective, params, batch):
    run = objectives.RunView(step=jnp.zeros((), jnp.int32), hparams={}, refreshed={}, term_states={})
    return objective.loss(self.model, params, {}, batch=batch, run=run, rng=jax.random.PRNGKey(0))

  def setUp(self):
    super().setUp()
    self.model = models.mlp(6, (), 3)  # logits = x W + b: the input gradient in closed form
    self.params = self.model.init(jax.random.PRNGKey(1))
    rng = np.random.default_rng(0)
    self.batch = dict(inputs=jnp.asarray(rng.normal(size=(5, 6)), jnp.float32),
                      labels=jnp.asarray(rng.integers(3, size=5), jnp.int32),
                      mask=jnp.asarray(rng.integers(2, size=(5, 6)), jnp.float32))

  def test_per_annotated_entry_normalisation_matches_numpy(self):
    term = objectives.explanation_penalty(normalize="annotated")
    _, metrics = self._loss(objectives.compose(term), self.params, self.batch)
    kernel = np.asarray(self.params["output"]["kernel"], np.float64)
    logits = np.asarray(self.batch["inputs"], np.float64) @ kernel + np.asarray(
        self.params["output"]["bias"], np.float64)
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    # d/dx sum_k log p_k = W (1 - K p): sum_k z_k - K logsumexp(z), differentiated.
    gradients = (1.0 - 3 * probabilities) @ kernel.T
    mask = np.asarray(self.batch["mask"], np.float64)
    expected = np.sum((mask * gradients) ** 2) / max(1.0, mask.sum())
    np.testing.assert_allclose(metrics["loss/explanation"], expected, rtol=1e-4)
    per_example = objectives.explanation_penalty()
    _, metrics = self._loss(objectives.compose(per_example), self.params, self.batch)
    np.testing.assert_allclose(metrics["loss/explanation"],
                               np.mean(np.sum((mask * gradients) ** 2, -1)), rtol=1e-4)

  def test_empty_mask_divides_by_one(self):
    batch = dict(self.batch, mask=jnp.zeros((5, 6), jnp.float32))
    _, metrics = self._loss(objectives.compose(objectives.explanation_penalty(normalize="annotated")),
                            self.params, batch)
    self.assertEqual(float(metrics["loss/explanation"]), 0.0)
    with self.assertRaisesRegex(BadInputError, r"normalize='batch'"):
      objectives.explanation_penalty(normalize="batch")

  def test_l2_penalty_is_the_sum_of_squared_parameters(self):
    _, metrics = self._loss(objectives.compose(objectives.l2_penalty(weight=1e-4)), self.params,
                            self.batch)
    expected = sum(np.sum(np.asarray(leaf, np.float64) ** 2)
                   for leaf in jax.tree.leaves(self.params))
    np.testing.assert_allclose(metrics["loss/l2"], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["l2/param_norm"], np.sqrt(expected), rtol=1e-5)


class InitialiserTest(absltest.TestCase):

  def test_paper_initialiser_draws_every_weight_and_bias_from_0_1_normal(self):
    params = models.mlp(75, (50, 30), 2, init_scale=0.1).init(jax.random.PRNGKey(0))
    leaves = jax.tree.leaves(params)
    values = np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in leaves])
    self.assertLen(values, 75 * 50 + 50 + 50 * 30 + 30 + 30 * 2 + 2)
    # 5392 draws: the standard error of the mean is 0.1 / sqrt(5392) = 0.0014, of the std 0.001.
    self.assertAlmostEqual(values.mean(), 0.0, delta=0.007)
    self.assertAlmostEqual(values.std(), 0.1, delta=0.005)
    biases = np.concatenate([np.asarray(params["hidden"][i]["bias"]) for i in ("0", "1")])
    self.assertAlmostEqual(biases.std(), 0.1, delta=0.03)  # 80 draws

  def test_default_initialiser_is_unchanged(self):
    params = models.mlp(75, (50, 30), 2).init(jax.random.PRNGKey(0))
    self.assertEqual(float(np.abs(params["hidden"]["0"]["bias"]).max()), 0.0)
    # LeCun normal: std 1 / sqrt(fan_in).
    self.assertAlmostEqual(float(np.std(params["hidden"]["0"]["kernel"])), 1 / np.sqrt(75),
                           delta=0.01)
    with self.assertRaisesRegex(BadInputError, r"init_scale=-0.1"):
      models.mlp(75, (50,), 2, init_scale=-0.1)


class PresetTest(absltest.TestCase):

  def test_preset_sets_the_papers_settings(self):
    settings = flagship_config.get_config("rrr_paper").sample_efficiency
    self.assertEqual(list(settings.sizes), np.logspace(1, 4, 32).astype(int).tolist())
    self.assertEqual((settings.input_scale, settings.init_scale, tuple(settings.hidden_sizes),
                      settings.l2, settings.explanation_weight, settings.explanation_normalize,
                      settings.schedule, settings.num_train, settings.num_eval, settings.rule),
                     ("raw", 0.1, (50, 30), 1e-4, 10000.0, "annotated", "epochs", 20000, 20000,
                      "first_above"))
    self.assertEqual(_sample_efficiency.PUBLISHED_RATIOS[0.99], 6.0)

  def test_bad_setting_names_the_field_before_training(self):
    config = flagship_config.get_config("rrr_paper_smoke")
    config.sample_efficiency.schedule = "weekly"
    with self.assertRaisesRegex(BadInputError, r"config\.sample_efficiency\.schedule='weekly'"):
      _sample_efficiency.run(config, tempfile.mkdtemp())

  def test_the_experiment_runs_the_study_alone_and_refuses_no_task_without_it(self):
    config = flagship_config.get_config("rrr_paper_smoke")
    self.assertEqual(_run.validate(config)[0], [])
    config.sample_efficiency.enabled = False
    with self.assertRaisesRegex(training.ConfigError, r"config\.tasks='': unknown empty"):
      _run.validate(config)

  def test_smoke_variant_runs_end_to_end(self):
    config = flagship_config.get_config("rrr_paper_smoke")
    workdir = tempfile.mkdtemp()
    summary = block_vs_reshape.run(config, workdir, command="c")
    self.assertEqual(summary["tasks"], {})
    with open(os.path.join(workdir, "report.md")) as handle:
      self.assertIn("## Toy Colors sample efficiency", handle.read())
    self.assertTrue(os.path.exists(os.path.join(workdir, "sample_efficiency.png")))
    result = _sample_efficiency.run(config, tempfile.mkdtemp())
    for condition in _sample_efficiency.CONDITIONS:
      accuracy = np.asarray(result["accuracy"][condition]["id"])
      self.assertEqual(accuracy.shape, (len(config.sample_efficiency.sizes), config.num_seeds))
      self.assertTrue(np.all((accuracy >= 0) & (accuracy <= 1)))
    self.assertLen(result["per_seed"]["id"][0.99], config.num_seeds)
    self.assertEqual(result["steps"][6], dict(epochs=4, batch_size=4, num_batches=2, remainder=2,
                                              steps=8))

  def test_cells_in_workers_resume_and_refuse_other_settings(self):
    config = flagship_config.get_config("rrr_paper_smoke")
    config.sample_efficiency.sizes = (5, 6)
    config.workers = 2
    in_workers, here = tempfile.mkdtemp(), tempfile.mkdtemp()
    first = _sample_efficiency.run(config, in_workers)
    self.assertLen(os.listdir(os.path.join(in_workers, "epochs", "pro_rule1")), 2)
    config.workers = 1
    alone = _sample_efficiency.run(config, here)
    for condition in _sample_efficiency.CONDITIONS:  # the same programs in any process: bitwise
      np.testing.assert_array_equal(first["accuracy"][condition]["ood"],
                                    alone["accuracy"][condition]["ood"])
    with mock.patch.object(_sample_efficiency, "train_epoch_cell",
                           side_effect=AssertionError("a finished cell trained again")):
      again = _sample_efficiency.run(config, in_workers)
    np.testing.assert_array_equal(again["accuracy"]["label_only"]["id"],
                                  first["accuracy"]["label_only"]["id"])
    config.sample_efficiency.example_budget = 30
    with self.assertRaisesRegex(training.ConfigError, r"label_only/5\.json was computed with other "
                                                      r"settings \(settings: .*use a fresh workdir"):
      _sample_efficiency.run(config, in_workers)


if __name__ == "__main__":
  absltest.main()
