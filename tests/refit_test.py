"""Re-estimation: a basis refitted inside the training loop, used by a term and a transform."""

import dataclasses
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest
from absl.testing import parameterized

from landscape import data
from landscape import directions
from landscape import interventions
from landscape import models
from landscape import objectives
from landscape import training
from landscape import transforms
from landscape.sites import UnknownSiteError

SITE = "hidden_0"
NAME = "concept_basis"
MODEL = models.mlp(64, (16,), 10)
DATASET = data.decoy_digits()
PROBE_BATCH = {name: value[:128] for name, value in DATASET.eval_sets["val_id"].items()}


def _config(steps, num_seeds=1, checkpoint_every=0):
  config = training.loop_config()
  config.update(steps=steps, num_seeds=num_seeds, batch_size=32, log_every=5, eval_every=0,
                checkpoint_every=checkpoint_every, steps_per_call=5, tensorboard=False)
  return config


def _ablating_objective():
  """Cross-entropy with the refreshed basis ablated at the site in the training forward pass."""
  task = dataclasses.replace(
      objectives.cross_entropy(),
      interventions=lambda run, batch: {SITE: interventions.ablate(run.refreshed[NAME])})
  return objectives.compose(task)


class RefresherUnitTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.params = MODEL.init(jax.random.PRNGKey(0))

  def test_update_refits_on_schedule_and_keeps_value_otherwise(self):
    refresher = directions.refit_basis(NAME, model=MODEL, site=SITE, data=DATASET, num_classes=10,
                                       every=5, batch_size=64)
    initial = jax.jit(refresher.init)(jax.random.PRNGKey(1), self.params)
    self.assertEqual(int(initial.fitted_step), 0)
    update = jax.jit(lambda value, params, step, key: refresher.update(
        value, params=params, step=step, key=key, run=None))
    moved = jax.tree_util.tree_map(lambda leaf: leaf * 1.5, self.params)
    kept = update(initial, moved, jnp.asarray(3), jax.random.PRNGKey(2))
    np.testing.assert_array_equal(kept.vectors, initial.vectors)
    self.assertEqual(int(kept.fitted_step), 0)
    refitted = update(initial, moved, jnp.asarray(5), jax.random.PRNGKey(2))
    self.assertEqual(int(refitted.fitted_step), 5)
    self.assertGreater(float(jnp.max(jnp.abs(refitted.vectors - initial.vectors))), 1e-3)
    directions.check_basis(refitted, width=16)
    self.assertEqual((refitted.site, refitted.method, refitted.labels[0]),
                     (SITE, "diff_of_means", "concept=1"))

  @parameterized.parameters(("diff_of_means",), ("logistic_probe",), ("ridge_probe",))
  def test_in_trace_fit_matches_the_host_fit(self, method):
    refresher = directions.refit_basis(NAME, model=MODEL, site=SITE, data=PROBE_BATCH,
                                       num_classes=10, method=method, steps=100)
    fitted = jax.jit(refresher.init)(jax.random.PRNGKey(0), self.params)
    rows = directions.capture(MODEL, self.params, PROBE_BATCH, sites=[SITE])
    acts, labels = rows[SITE], rows.fields["concept"]
    if method == "diff_of_means":
      reference = directions.diff_of_means(acts, labels, site=SITE, num_classes=10)
    elif method == "logistic_probe":
      reference = directions.logistic_probe(acts, labels, site=SITE, num_classes=10, steps=100,
                                            heldout_fraction=0.0).basis
    else:
      reference = directions.ridge_probe(acts, labels, site=SITE, num_classes=10,
                                         heldout_fraction=0.0).basis
    chex.assert_shape(fitted.vectors, (9, 16))
    np.testing.assert_allclose(fitted.vectors, reference.vectors, atol=5e-4)
    self.assertEqual(fitted.labels, reference.labels)

  def test_bad_configuration_fails_at_construction(self):
    with self.assertRaisesRegex(UnknownSiteError, r"hidden_3"):
      directions.refit_basis(NAME, model=MODEL, site="hidden_3", data=DATASET, num_classes=10)
    with self.assertRaisesRegex(ValueError, r"method='pca'"):
      directions.refit_basis(NAME, model=MODEL, site=SITE, data=DATASET, num_classes=10, method="pca")
    with self.assertRaisesRegex(ValueError, r"no field\(s\) \['colour'\]"):
      directions.refit_basis(NAME, model=MODEL, site=SITE, data=DATASET, num_classes=10,
                             field="colour")
    with self.assertRaisesRegex(ValueError, r"every=-1"):
      directions.refit_basis(NAME, model=MODEL, site=SITE, data=DATASET, num_classes=10, every=-1)


class ClassMeansTest(absltest.TestCase):

  def test_class_means_minus_grand_mean_match_numpy(self):
    refresher = directions.refit_class_means("means", model=MODEL, site=SITE, data=PROBE_BATCH,
                                             num_classes=10, every=0)
    params = MODEL.init(jax.random.PRNGKey(0))
    means = np.asarray(refresher.init(jax.random.PRNGKey(0), params), np.float64)
    rows = directions.capture(MODEL, params, PROBE_BATCH, sites=[SITE])
    acts = np.asarray(rows[SITE], np.float64)
    concept = np.asarray(rows.fields["concept"])
    expected = np.stack([acts[concept == c].mean(0) for c in range(10)]) - acts.mean(0)
    np.testing.assert_allclose(means, expected, atol=1e-5)


class RefitInTrainingTest(absltest.TestCase):

  def test_refits_at_the_right_steps_on_the_params_of_that_step(self):
    refresher = directions.refit_basis(NAME, model=MODEL, site=SITE, data=PROBE_BATCH,
                                       num_classes=10, every=5)
    kwargs = dict(model=MODEL, objective=_ablating_objective(), optimizer=optax.adam(1e-2),
                  dataset=DATASET, refreshers=[refresher])
    ten = training.train(_config(10), tempfile.mkdtemp(), **kwargs)
    five = training.train(_config(5), tempfile.mkdtemp(), **kwargs)
    basis = ten.state.refreshed[NAME]
    np.testing.assert_array_equal(basis.fitted_step, [5])  # refits at steps 0 and 5, not 10
    params_at_five = jax.tree_util.tree_map(lambda leaf: leaf[0], training.fetch(five.state.params))
    rows = directions.capture(MODEL, params_at_five, PROBE_BATCH, sites=[SITE])
    direct = directions.diff_of_means(rows[SITE], rows.fields["concept"], site=SITE, num_classes=10)
    np.testing.assert_allclose(basis.vectors[0], direct.vectors, atol=1e-4)

  def test_every_zero_keeps_the_basis_fitted_at_initialisation(self):
    refresher = directions.refit_basis(NAME, model=MODEL, site=SITE, data=PROBE_BATCH,
                                       num_classes=10, every=0)
    kwargs = dict(model=MODEL, objective=_ablating_objective(), optimizer=optax.adam(1e-2),
                  dataset=DATASET, refreshers=[refresher])
    result = training.train(_config(10), tempfile.mkdtemp(), **kwargs)
    initial = refresher.init(jax.random.PRNGKey(0), MODEL.init(jax.random.PRNGKey(0)))
    basis = result.state.refreshed[NAME]
    np.testing.assert_array_equal(basis.fitted_step, [0])
    self.assertIn("fitted once at initialisation", basis.source)
    self.assertEqual(basis.vectors.shape[1:], initial.vectors.shape)

  def test_resumed_run_ends_bitwise_where_a_straight_run_ends(self):
    refresher = directions.refit_basis(NAME, model=MODEL, site=SITE, data=DATASET, num_classes=10,
                                       every=5, batch_size=64, method="diff_of_means")
    params = MODEL.init(jax.random.PRNGKey(0))
    template = refresher.init(jax.random.PRNGKey(0), params)
    directions.check_bases(MODEL, params, PROBE_BATCH["inputs"][:2], {SITE: template})
    held = transforms.site_directions({SITE: template}, MODEL.site_links, extra_arg="bases")
    optimizer = optax.chain(transforms.project_out(held), optax.adam(1e-2))
    kwargs = dict(model=MODEL, objective=_ablating_objective(), optimizer=optimizer,
                  dataset=DATASET, refreshers=[refresher],
                  optimizer_extra_args=lambda state: {"bases": {SITE: state.refreshed[NAME]}})
    workdir = tempfile.mkdtemp()
    first = training.train(_config(20, num_seeds=2, checkpoint_every=10), workdir, **kwargs)
    np.testing.assert_array_equal(first.state.refreshed[NAME].fitted_step, [15, 15])
    resumed = training.train(_config(40, num_seeds=2, checkpoint_every=10), workdir, **kwargs)
    straight = training.train(_config(40, num_seeds=2, checkpoint_every=10), tempfile.mkdtemp(),
                              **kwargs)
    self.assertEqual(resumed.summary["digest"], straight.summary["digest"])
    self.assertEqual(resumed.summary["loss"], straight.summary["loss"])
    basis = straight.state.refreshed[NAME]
    np.testing.assert_array_equal(basis.fitted_step, [35, 35])
    self.assertFalse(np.array_equal(basis.vectors[0], basis.vectors[1]))  # each seed its own fit
    # The transform received the refreshed basis as its extra arg and holds it.
    held_state = straight.state.opt_state[0]
    np.testing.assert_array_equal(held_state.directions[SITE], basis.vectors)


if __name__ == "__main__":
  absltest.main()
