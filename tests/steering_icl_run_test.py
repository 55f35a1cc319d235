"""The experiment end to end on the smoke preset; steering of magnitude 0; prompts' exact read-outs."""

import json
import os
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from configs import steering_icl as steering_config
from landscape import data
from landscape import interventions
from landscape import models
from landscape import steering_icl
from landscape.steering_icl import _report
from landscape.steering_icl import _run
from landscape.training import ConfigError


class SteeringTest(absltest.TestCase):
  """The experiment steers with `interventions.steer(shift, 1.0, positions=-1)`."""

  def test_magnitude_zero_leaves_logits_bitwise_unchanged(self):
    model = models.gpt(models.GPTConfig.tiny())
    params = model.init(jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 7), 0, 64)
    # Op by op (un-jitted), adding zero is exact and every later op sees the same values. A
    # compiled program with the intervention is a different program that XLA may fuse otherwise,
    # so compiled, the two agree to float32 rounding only.
    plain = model.forward(params, tokens)[0]
    compiled_plain = jax.jit(lambda p, x: model.forward(p, x)[0])(params, tokens)
    for site in ("blocks.0.resid_post", "blocks.1.resid_post"):
      zero = interventions.steer(0.0 * jnp.ones((32,)), 1.0, positions=-1)
      steered = model.forward(params, tokens, interventions={site: zero})[0]
      np.testing.assert_array_equal(np.asarray(steered), np.asarray(plain))
      compiled = jax.jit(lambda p, x, v, site=site: model.forward(
          p, x, interventions={site: interventions.steer(v, 1.0, positions=-1)})[0])(
              params, tokens, jnp.zeros((32,)))
      np.testing.assert_allclose(np.asarray(compiled), np.asarray(compiled_plain), rtol=1e-5,
                                 atol=1e-6)

  def test_the_read_out_moves_only_with_the_last_position(self):
    model = models.gpt(models.GPTConfig.tiny())
    params = model.init(jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 5), 0, 64)
    shift = jax.random.normal(jax.random.PRNGKey(2), (32,))
    plain = model.forward(params, tokens)[0]
    steered = model.forward(params, tokens, interventions={
        "blocks.0.resid_post": interventions.steer(shift, 1.0, positions=-1)})[0]
    np.testing.assert_array_equal(np.asarray(steered[:, :-1]), np.asarray(plain[:, :-1]))
    self.assertGreater(float(jnp.abs(steered[:, -1] - plain[:, -1]).max()), 1e-3)


class PromptsTest(absltest.TestCase):

  def test_nested_prompts_and_exact_read_outs(self):
    mixture = data.ginc_mixture(num_concepts=3, transition_temperature=1.0, smoothing=0.2, seed=0)
    prompts = steering_icl.make_prompts(mixture, shots=(0, 2, 5), num_prompts=16, num_groups=4,
                                        shot_length=3, query_length=3, target_concept=0,
                                        shot_concept=1, seed=0)
    query = prompts.tokens[0]
    for count, tokens in zip(prompts.shots, prompts.tokens):
      self.assertEqual(tokens.shape, (16, 3 * count + 3))
      np.testing.assert_array_equal(tokens[:, -3:], query)
    np.testing.assert_array_equal(prompts.tokens[2][:, :6], prompts.tokens[1][:, :6])
    self.assertTrue(np.all(prompts.target_token_P != prompts.other_token_P))
    posterior = data.concept_log_posterior(mixture, prompts.tokens[1])[:, -1]
    np.testing.assert_allclose(prompts.bayes_log_odds_NxP[1], posterior[:, 0] - posterior[:, 1])
    # Shots of concept 1 lower the exact log-odds of concept 0, on average.
    means = prompts.bayes_log_odds_NxP.mean(1)
    self.assertGreater(means[0], means[1])
    self.assertGreater(means[1], means[2])


class SmokeRunTest(absltest.TestCase):

  def test_smoke_run_writes_a_report_from_its_own_numbers_and_refuses_a_stale_rerun(self):
    workdir = tempfile.mkdtemp()
    config = steering_config.get_config("smoke")
    summary = steering_icl.run(config, workdir)
    for name in ("report.md", "summary.json", "metrics.jsonl", "measured.npz", "grid.png",
                 "boundary.png", os.path.join("train", "config.json"),
                 os.path.join("train", "summary.json")):
      self.assertTrue(os.path.exists(os.path.join(workdir, name)), name)
    with open(os.path.join(workdir, "report.md")) as handle:
      text = handle.read()
    with open(os.path.join(workdir, "summary.json")) as handle:
      self.assertEqual(json.load(handle)["criteria"], summary["criteria"])
    self.assertLen(summary["criteria"], len(steering_icl.PREREGISTERED))
    # Judging measured.npz again gives exactly the sentences the report printed.
    measured = steering_icl.Measured.load(os.path.join(workdir, "measured.npz"))
    judged = _report.judge(measured, num_bootstrap=config.num_bootstrap, seed=config.seed)
    for verdict in judged.verdicts:
      self.assertIn(verdict.sentence, text)
      if verdict.estimate is not None:
        self.assertIn(f"{verdict.estimate.mean:.3f}"[:4], verdict.sentence)
    # Criterion 1 recomputed here from measured.npz, outside the report's judging: the best site's
    # held-out R^2 of the difference of means, and that site, are what its sentence says.
    reference = measured.kinds.index("diff_of_means")
    held_out = {site: steering_icl.leave_one_magnitude_out_r2(
        measured.magnitudes, measured.shots, measured.log_odds[site][reference])
        for site in measured.sites}
    best_site = max(held_out, key=held_out.get)
    self.assertIn(f"{held_out[best_site]:.3f}", judged.verdicts[0].sentence)
    self.assertIn(f"`{best_site}`", judged.verdicts[0].sentence)
    sites = [f"blocks.{i}.resid_post" for i in range(config.model.num_layers)]
    self.assertEqual(measured.sites, tuple(sites))
    kinds = config.steering.kinds.split(",")
    self.assertEqual(measured.kinds, tuple(kinds))
    self.assertIn("sae", kinds)
    self.assertEqual(measured.log_odds[sites[0]].shape,
                     (len(kinds), config.num_seeds * config.prompts.num_groups,
                      len(config.steering.magnitudes), len(config.prompts.shots)))
    # m = 0 is the unsteered model, whatever the vector: every kind measures the same numbers.
    zero = list(config.steering.magnitudes).index(0.0)
    grid = measured.log_odds[sites[0]]
    for index in range(1, len(kinds)):
      np.testing.assert_array_equal(grid[index, :, zero], grid[0, :, zero])
    # The SAE feature: one per seed, its AUROCs oriented (>= 0.5 where it was chosen), its
    # direction a unit vector; the report's separation count is the run's own.
    found = measured.sae[sites[0]]
    self.assertEqual(found["feature_S"].shape, (config.num_seeds,))
    self.assertTrue(np.all((0 <= found["feature_S"]) & (found["feature_S"] < config.sae.d_sae)))
    self.assertTrue(np.all(found["auroc_chosen_S"] >= 0.5))
    self.assertTrue(np.all((0 <= found["auroc_heldout_S"]) & (found["auroc_heldout_S"] <= 1)))
    np.testing.assert_allclose(np.linalg.norm(found["direction_SxD"], axis=1), 1.0, rtol=1e-9)
    separating = int(np.sum(found["auroc_heldout_S"] >= 0.8))
    self.assertIn(f"| {separating} of {config.num_seeds} seeds |", text)
    self.assertIn(f"{judged.fits[sites[0], 'sae'].a.mean:+.3f}", text)
    self.assertEqual(summary["sae"][sites[0]]["feature"], found["feature_S"].tolist())
    self.assertTrue(re.search(r"Held-out next-token loss: model \d", text))
    # The Bayes-optimal loss by position averages to the dataset's (the same held-out documents).
    np.testing.assert_allclose(measured.bayes_position_loss_T.mean(), measured.bayes_loss,
                               rtol=1e-9)
    # The exact read-outs are kept per prompt group (the bootstrap resamples groups).
    self.assertEqual(measured.bayes_log_odds_GxN.shape,
                     (config.prompts.num_groups, len(config.prompts.shots)))
    # metrics.jsonl: one row per site, kind and cell, its mean the units' mean of measured.npz.
    with open(os.path.join(workdir, "metrics.jsonl")) as handle:
      rows = [json.loads(line) for line in handle]
    self.assertLen(rows, len(sites) * len(kinds) * grid.shape[2] * grid.shape[3])
    last_cell = measured.log_odds[sites[-1]][-1, :, -1, -1]
    self.assertEqual(rows[-1]["units"], last_cell.tolist())
    self.assertAlmostEqual(rows[-1]["log_odds"], float(last_cell.mean()))
    self.assertEqual(measured.model_position_loss_SxT.shape, (config.num_seeds, config.seq_len))

    changed = steering_config.get_config("smoke")
    changed.unlock()
    changed.num_bootstrap = config.num_bootstrap + 1
    with self.assertRaisesRegex(ConfigError, r"config\.num_bootstrap=11 \(the run has 10\)"):
      steering_icl.run(changed, workdir)

  def test_bad_configs_are_refused_before_training(self):
    config = steering_config.get_config("smoke")
    config.unlock()
    config.steering.kinds = "diff_of_means,pca"
    with self.assertRaisesRegex(ConfigError, r"config\.steering\.kinds=.*unknown \['pca'\]"):
      steering_icl.run(config, tempfile.mkdtemp())
    config = steering_config.get_config("smoke")
    config.unlock()
    config.sae.k = 17
    with self.assertRaisesRegex(ConfigError, r"config\.sae\.k=17: must not exceed "
                                r"config\.sae\.d_sae=16"):
      steering_icl.run(config, tempfile.mkdtemp())
    config = steering_config.get_config("smoke")
    config.unlock()
    config.sae.batch_size = 4096
    with self.assertRaisesRegex(ConfigError, r"config\.sae\.batch_size=4096: .* 231 training rows"):
      steering_icl.run(config, tempfile.mkdtemp())
    config = steering_config.get_config("smoke")
    config.unlock()
    config.prompts.shots = (0, 2, 40)
    with self.assertRaisesRegex(ConfigError, r"config\.seq_len=32: the longest prompt has 122"):
      steering_icl.run(config, tempfile.mkdtemp())
    config = steering_config.get_config("smoke")
    config.unlock()
    config.prompts.num_groups = 3
    with self.assertRaisesRegex(ConfigError, r"config\.prompts\.num_groups=3: must divide"):
      steering_icl.run(config, tempfile.mkdtemp())
    config = steering_config.get_config("smoke")
    config.unlock()
    config.prompts.shot_concept = 7
    with self.assertRaisesRegex(ConfigError, r"config\.prompts\.shot_concept=7: the mixture has"):
      steering_icl.run(config, tempfile.mkdtemp())



class PresetTest(absltest.TestCase):

  def test_gpu_preset_builds_and_validates_without_running(self):
    config = steering_config.get_config("gpu")
    default = steering_config.get_config("")
    sites, kinds = _run.validate(config)
    self.assertGreater(config.mixture.num_concepts, default.mixture.num_concepts)
    self.assertGreater(config.model.num_layers, default.model.num_layers)
    self.assertEqual(max(config.prompts.shots), 64)
    self.assertEqual(sites, [f"blocks.{i}.resid_post" for i in range(config.model.num_layers)])
    self.assertEqual(kinds, ["diff_of_means", "shots", "random", "sae"])
    # The pieces it builds, without the exact posterior's cost: the mixture and the model's shapes.
    mixture = data.ginc_mixture(**config.mixture.to_dict())
    self.assertEqual(mixture.num_concepts, config.mixture.num_concepts)
    model = models.gpt(models.GPTConfig(
        vocab_size=mixture.vocab_size, max_len=config.seq_len, d_model=config.model.d_model,
        num_layers=config.model.num_layers, num_heads=config.model.num_heads))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    self.assertTrue(any(leaf.shape[-1] == config.model.d_model
                        for leaf in jax.tree_util.tree_leaves(shapes)))
    with self.assertRaisesRegex(ValueError, r"unknown preset 'tpu'"):
      steering_config.get_config("tpu")


if __name__ == "__main__":
  absltest.main()
