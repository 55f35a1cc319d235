"""Finding directions: probes, difference of means, PCA, SAE spans, decodability and bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from landscape import directions
from landscape import interventions
from landscape import models
from landscape import objectives
from landscape.directions import BasisError
from landscape.directions import make_basis
from landscape.models import Model
from landscape.sites import UnknownSiteError

SITE = "hidden_0"


def _planted_binary(num_rows=3000, width=12, separation=2.5, seed=0):
  """Rows x = noise + offset + separation * (+-1) v: the concept is linear along v."""
  rng = np.random.default_rng(seed)
  direction = rng.normal(size=width)
  direction /= np.linalg.norm(direction)
  labels = rng.integers(0, 2, num_rows)
  acts = (rng.normal(size=(num_rows, width)) + 0.5
          + separation * (2 * labels - 1)[:, None] * direction[None, :])
  return acts.astype(np.float32), labels.astype(np.int32), direction


def _planted_classes(num_rows=3000, width=16, num_classes=4, separation=3.0, seed=1):
  rng = np.random.default_rng(seed)
  centres = np.linalg.qr(rng.normal(size=(width, num_classes)))[0].T * separation
  labels = rng.integers(0, num_classes, num_rows)
  acts = rng.normal(size=(num_rows, width)) + centres[labels]
  return acts.astype(np.float32), labels.astype(np.int32), centres


def _span_overlap(basis_KxD, reference_RxD):
  """Smallest norm of a reference direction's projection onto the basis's span (1: inside it)."""
  q = np.asarray(basis_KxD, np.float64)
  _, singular_values, rows = np.linalg.svd(np.asarray(reference_RxD, np.float64), full_matrices=False)
  reference = rows[singular_values > 1e-9 * singular_values[0]]
  return float(np.min(np.linalg.norm(reference @ q.T, axis=1)))


class LogisticProbeTest(absltest.TestCase):

  def test_finds_planted_binary_concept(self):
    acts, labels, direction = _planted_binary()
    result = directions.logistic_probe(acts, labels, site=SITE, source="planted")
    self.assertGreater(result.heldout_accuracy, 0.97)
    self.assertGreater(result.train_accuracy, 0.97)
    self.assertAlmostEqual(result.chance, 0.5, delta=0.05)
    chex.assert_shape(result.basis.vectors, (1, 12))
    cosine = float(np.asarray(result.basis.vectors[0], np.float64) @ direction)
    self.assertGreater(cosine, 0.98)  # and it points from class 0 to class 1
    self.assertEqual(result.basis.labels, ("concept=1",))
    self.assertEqual((result.basis.method, result.basis.site, result.basis.source),
                     ("logistic_probe", SITE, "planted"))
    self.assertEqual(result.num_train + result.num_heldout, 3000)

  def test_stays_near_chance_on_noise(self):
    rng = np.random.default_rng(3)
    acts = rng.normal(size=(2000, 12)).astype(np.float32)
    labels = rng.integers(0, 3, 2000)
    result = directions.logistic_probe(acts, labels, site=SITE)
    self.assertLess(abs(result.heldout_accuracy - 1 / 3), 0.06)
    self.assertLess(result.heldout_accuracy, result.chance + 0.05)

  def test_multiclass_basis_spans_the_planted_class_offsets(self):
    acts, labels, centres = _planted_classes()
    result = directions.logistic_probe(acts, labels, site=SITE, label_names=["a", "b", "c", "d"])
    self.assertGreater(result.heldout_accuracy, 0.95)
    chex.assert_shape(result.basis.vectors, (3, 16))
    self.assertEqual(result.basis.labels, ("concept=b", "concept=c", "concept=d"))
    self.assertGreater(_span_overlap(result.basis.vectors, centres - centres.mean(0)), 0.97)
    directions.check_basis(result.basis, width=16)

  def test_weights_give_the_logits_in_raw_coordinates(self):
    acts, labels, _ = _planted_classes(num_rows=600)
    result = directions.logistic_probe(acts, labels, site=SITE, heldout_fraction=0.0)
    predictions = np.argmax(acts.astype(np.float64) @ result.weights + result.bias, axis=1)
    self.assertAlmostEqual(float(np.mean(predictions == labels)), result.train_accuracy, places=5)
    self.assertTrue(np.isnan(result.heldout_accuracy))

  def test_core_is_jittable_and_vmaps_over_runs(self):
    acts, labels, _ = _planted_binary(num_rows=500)
    weights = jnp.ones((500,), jnp.float32)
    fit = jax.jit(lambda a: directions.fit_logistic(a, labels, weights, num_classes=2))
    stacked = jnp.stack([acts, 2.0 * acts])
    batched_weights, batched_bias = jax.vmap(fit)(stacked)
    for index in range(2):
      one_weights, one_bias = fit(stacked[index])
      np.testing.assert_allclose(batched_weights[index], one_weights, rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(batched_bias[index], one_bias, rtol=1e-4, atol=1e-5)


class RidgeProbeTest(absltest.TestCase):

  def test_matches_float64_closed_form_and_recovers_the_target_direction(self):
    rng = np.random.default_rng(5)
    acts = (rng.normal(size=(1500, 10)) * np.linspace(0.5, 2.0, 10) + 1.0).astype(np.float32)
    true_weights = rng.normal(size=10)
    targets = (acts @ true_weights + 0.1 * rng.normal(size=1500)).astype(np.float32)
    heldout = np.arange(1500) >= 1100
    result = directions.ridge_probe(acts, targets, site=SITE, l2=1e-3, heldout=heldout, field="score")
    self.assertEqual((result.num_train, result.num_heldout), (1100, 400))
    train = ~heldout
    x = acts[train].astype(np.float64)
    y = targets[train].astype(np.float64)
    centred = x - x.mean(0)
    gram = centred.T @ centred / len(x)
    reference = np.linalg.solve(gram + 1e-3 * np.trace(gram) / 10 * np.eye(10),
                                centred.T @ (y - y.mean()) / len(x))
    np.testing.assert_allclose(result.weights[:, 0], reference, rtol=1e-4, atol=1e-5)
    self.assertGreater(result.heldout_r2, 0.99)
    self.assertEqual(result.basis.labels, ("score",))
    cosine = float(np.asarray(result.basis.vectors[0], np.float64) @ true_weights
                   / np.linalg.norm(true_weights))
    self.assertGreater(cosine, 0.999)

  def test_class_targets_give_accuracy_and_class_directions(self):
    acts, labels, centres = _planted_classes()
    result = directions.ridge_probe(acts, labels, site=SITE)
    self.assertGreater(result.heldout_accuracy, 0.95)
    chex.assert_shape(result.basis.vectors, (3, 16))
    self.assertGreater(_span_overlap(result.basis.vectors, centres - centres.mean(0)), 0.97)


class StatisticsTest(parameterized.TestCase):

  @parameterized.parameters((2,), (5,))
  def test_diff_of_means_equals_float64_reference(self, num_classes):
    rng = np.random.default_rng(num_classes)
    labels = rng.integers(0, num_classes, 800)
    acts = (rng.normal(size=(800, 12)) + 3.0 + rng.normal(size=(num_classes, 12))[labels])
    basis = directions.diff_of_means(acts.astype(np.float32), labels, site=SITE)
    x = acts.astype(np.float32).astype(np.float64)
    means = np.stack([x[labels == c].mean(0) for c in range(num_classes)])
    rows = means[1:] - x.mean(0)
    reference = make_basis(rows, site=SITE)
    np.testing.assert_allclose(basis.vectors, reference.vectors, atol=1e-5)
    self.assertEqual(basis.method, "diff_of_means")
    self.assertLen(basis.labels, num_classes - 1)
    if num_classes == 2:
      difference = means[1] - means[0]
      np.testing.assert_allclose(basis.vectors[0], difference / np.linalg.norm(difference), atol=1e-5)

  def test_pca_equals_float64_reference(self):
    rng = np.random.default_rng(7)
    scales = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1])
    rotation = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    acts = ((rng.normal(size=(2000, 8)) * scales) @ rotation.T + 4.0).astype(np.float32)
    result = directions.pca(acts, 3, site=SITE)
    x = acts.astype(np.float64)
    centred = x - x.mean(0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / (len(x) - 1))
    order = np.argsort(-eigenvalues)[:3]
    components = eigenvectors[:, order].T
    components *= np.sign(components[np.arange(3), np.argmax(np.abs(components), axis=1)])[:, None]
    np.testing.assert_allclose(result.basis.vectors, components, atol=1e-4)
    np.testing.assert_allclose(result.explained_variance, eigenvalues[order], rtol=1e-4)
    np.testing.assert_allclose(result.explained_variance_ratio, eigenvalues[order] / eigenvalues.sum(),
                               rtol=1e-4)
    np.testing.assert_allclose(result.mean, x.mean(0), atol=1e-5)
    self.assertEqual(result.basis.labels, ("pc0", "pc1", "pc2"))

  def test_sae_basis_is_make_basis_of_the_selected_rows(self):
    decoder = np.random.default_rng(2).normal(size=(50, 12))
    basis = directions.sae_basis(decoder, [7, 3, 21], site=SITE, source="sae.npz")
    reference = make_basis(decoder[[7, 3, 21]], site=SITE)
    np.testing.assert_array_equal(basis.vectors, reference.vectors)
    self.assertEqual(basis.labels, ("sae/7", "sae/3", "sae/21"))
    self.assertEqual((basis.method, basis.source), ("sae", "sae.npz"))
    mask = np.zeros(50, bool)
    mask[[3, 7, 21]] = True
    from_mask = directions.sae_basis(decoder, mask, site=SITE)
    np.testing.assert_array_equal(from_mask.vectors,
                                  make_basis(decoder[[3, 7, 21]], site=SITE).vectors)

  def test_sae_basis_rejects_rank_deficient_selection(self):
    decoder = np.random.default_rng(2).normal(size=(10, 12))
    decoder[4] = 2.0 * decoder[1]
    with self.assertRaisesRegex(BasisError, r"site 'hidden_0'.*\(2, 12\) span rank 1"):
      directions.sae_basis(decoder, [1, 4], site=SITE)


def _two_site_model(width=8):
  """A researcher's own model: site "carries" sees the first half of the input, "blind" the second."""

  def init(key):
    del key
    return {"scale": jnp.ones((2,), jnp.float32)}

  def apply(params, inputs, sites):
    carries = sites("carries", params["scale"][0] * inputs[:, :width])
    blind = sites("blind", params["scale"][1] * inputs[:, width:])
    return jnp.concatenate([carries, blind], axis=1)

  return Model(init=init, apply=apply, site_names=("carries", "blind"), name="two_site")


def _concept_batch(num_examples=900, width=8, num_classes=3, seed=0):
  rng = np.random.default_rng(seed)
  concept = rng.integers(0, num_classes, num_examples)
  centres = 3.0 * np.eye(num_classes, width)
  carries = rng.normal(size=(num_examples, width)) + centres[concept]
  blind = rng.normal(size=(num_examples, width))
  inputs = np.concatenate([carries, blind], axis=1).astype(np.float32)
  return {"inputs": inputs, "concept": concept.astype(np.int32)}


def _assert_accuracies_agree(actual, expected, num_heldout):
  # Probes fitted to the same rows in another layout (padded chunks, a run axis) sum in another
  # order and differ by float32 rounding; a held-out row that close to the boundary may flip: one.
  np.testing.assert_allclose(actual, expected, rtol=0, atol=1.5 / float(np.min(num_heldout)))


class DecodabilityTest(absltest.TestCase):

  def test_planted_site_decodes_and_blind_site_sits_at_chance(self):
    model = _two_site_model()
    batch = _concept_batch()
    result = directions.decodability(model, model.init(None), batch, field="concept")
    self.assertEqual(result.sites, ("carries", "blind"))
    carries, blind = result.heldout_accuracy
    self.assertGreater(carries, 0.9)
    self.assertLess(abs(blind - result.chance[1]), 0.08)
    self.assertAlmostEqual(float(result.chance[0]), 1 / 3, delta=0.06)
    self.assertEqual(int(result.num_train[0] + result.num_heldout[0]), 900)
    self.assertIn("| carries |", result.to_markdown())
    self.assertEqual(set(result.as_dict()), {"carries", "blind"})

  def test_over_runs_vmaps_and_matches_single_runs(self):
    model = _two_site_model()
    batch = _concept_batch()
    scales = jnp.asarray([[1.0, 1.0], [0.0, 1.0], [2.0, 0.5]], jnp.float32)
    measure = directions.make_decodability(model, batch, field="concept", batch_size=256)
    result = measure({"scale": scales})
    chex.assert_shape(result.heldout_accuracy, (3, 2))
    for run in range(3):
      alone = directions.decodability(model, {"scale": scales[run]}, batch, field="concept")
      _assert_accuracies_agree(result.heldout_accuracy[run], alone.heldout_accuracy,
                               alone.num_heldout)
    # Scale 0 wipes the concept out of "carries" in run 1 only.
    self.assertGreater(result.heldout_accuracy[0, 0], 0.9)
    self.assertLess(result.heldout_accuracy[1, 0], result.chance[0] + 0.05)
    again = measure({"scale": scales})  # compiled once, reused
    np.testing.assert_array_equal(again.heldout_accuracy, result.heldout_accuracy)

  def test_interventions_read_each_runs_view(self):
    model = _two_site_model()
    batch = _concept_batch()
    offsets = np.eye(3, 8)[1:] - np.eye(3, 8)[:1]  # the planted class-mean differences
    planted = directions.make_basis(offsets, site="carries").vectors
    runs = objectives.RunView(  # run 1 ablates nothing
        step=jnp.zeros((2,), jnp.int32), hparams={},
        refreshed={"basis": jnp.stack([planted, jnp.zeros_like(planted)])}, term_states={})
    seen_batches = []

    def ablations(run, chunk):
      seen_batches.append(chunk["inputs"].shape)
      return {"carries": interventions.ablate(run.refreshed["basis"])}

    measure = directions.make_decodability(model, batch, field="concept",
                                           interventions=ablations)
    params = {"scale": jnp.ones((2, 2), jnp.float32)}
    result = measure(params, runs)
    self.assertLess(result.heldout_accuracy[0, 0], result.chance[0] + 0.06)
    self.assertGreater(result.heldout_accuracy[1, 0], 0.9)
    self.assertEqual(seen_batches[0][1:], np.shape(batch["inputs"])[1:])
    with self.assertRaisesRegex(ValueError, r"call it with the runs' views"):
      measure(params)

  def test_from_captures_matches_the_compiled_path(self):
    model = _two_site_model()
    batch = _concept_batch()
    params = model.init(None)
    captured = directions.capture(model, params, batch)
    from_captures = directions.decodability_of_captures(captured, field="concept")
    direct = directions.decodability(model, params, batch, field="concept")
    _assert_accuracies_agree(from_captures.heldout_accuracy, direct.heldout_accuracy,
                             direct.num_heldout)
    np.testing.assert_allclose(from_captures.chance, direct.chance)

  def test_token_model_probes_every_position_or_one(self):
    model = models.gpt(models.GPTConfig.tiny(num_layers=1))
    params = model.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, (64, 6)).astype(np.int32)
    batch = {"inputs": tokens, "concept": (tokens[:, 0] % 2).astype(np.int32),
             "token_parity": (tokens % 2).astype(np.int32)}
    sites = ("embed", "blocks.0.resid_post")
    per_token = directions.decodability(model, params, batch, field="token_parity", sites=sites)
    self.assertEqual(int(per_token.num_train[0] + per_token.num_heldout[0]), 64 * 6)
    first = directions.decodability(model, params, batch, field="concept", sites=sites, position=0)
    self.assertEqual(int(first.num_train[0] + first.num_heldout[0]), 64)


class BadInputTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.model = models.mlp(64, (12, 8), 10)
    self.params = self.model.init(jax.random.PRNGKey(0))
    self.inputs = jnp.zeros((2, 8, 8))

  def _basis(self, width=12, site=SITE, rows=2):
    return make_basis(np.random.default_rng(0).normal(size=(rows, width)), site=site)

  def test_check_bases_accepts_fitting_bases(self):
    directions.check_bases(self.model, self.params, self.inputs,
                           {SITE: self._basis(), "hidden_1": self._basis(8, "hidden_1")})

  def test_width_mismatch_names_site_and_shapes(self):
    with self.assertRaisesRegex(BasisError, r"site 'hidden_0'.*\(2, 13\).*width 13.*\(2, 12\)"):
      directions.check_bases(self.model, self.params, self.inputs, {SITE: self._basis(13)})

  def test_unknown_site_names_it_and_the_known_ones(self):
    with self.assertRaisesRegex(UnknownSiteError, r"hidden_5.*hidden_0, hidden_1"):
      directions.check_bases(self.model, self.params, self.inputs,
                             {"hidden_5": self._basis(site="hidden_5")})

  def test_non_finite_basis_names_site(self):
    basis = self._basis()
    bad = basis.replace(vectors=basis.vectors.at[1, 3].set(jnp.nan))
    with self.assertRaisesRegex(BasisError, r"site 'hidden_0'.*non-finite.*\(2, 12\)"):
      directions.check_bases(self.model, self.params, self.inputs, {SITE: bad})

  def test_rank_deficient_or_non_orthonormal_directions(self):
    rows = np.random.default_rng(0).normal(size=(3, 12))
    rows[2] = rows[0] + rows[1]
    with self.assertRaisesRegex(BasisError, r"site 'hidden_0'.*\(3, 12\) span rank 2"):
      make_basis(rows, site=SITE)
    raw = directions.Basis(vectors=jnp.asarray(rows, jnp.float32), fitted_step=jnp.asarray(-1),
                           site=SITE, labels=("a", "b", "c"))
    with self.assertRaisesRegex(BasisError, r"site 'hidden_0'.*not orthonormal"):
      directions.check_bases(self.model, self.params, self.inputs, {SITE: raw})

  def test_basis_fitted_elsewhere_is_rejected(self):
    with self.assertRaisesRegex(BasisError, r"given for site 'hidden_0' was fitted at site 'hidden_1'"):
      directions.check_bases(self.model, self.params, self.inputs, {SITE: self._basis(site="hidden_1")})

  def test_probe_inputs_are_checked(self):
    acts = np.zeros((10, 4), np.float32)
    acts[3, 1] = np.inf
    with self.assertRaisesRegex(ValueError, r"logistic_probe at site 'hidden_0': non-finite"):
      directions.logistic_probe(acts, np.arange(10) % 2, site=SITE)
    with self.assertRaisesRegex(ValueError, r"site 'hidden_0': 10 activation rows .* but 9 labels"):
      directions.logistic_probe(np.zeros((10, 4)), np.arange(9) % 2, site=SITE)
    with self.assertRaisesRegex(ValueError, r"diff_of_means at site 'hidden_0': class\(es\) \[2\]"):
      directions.diff_of_means(np.ones((6, 4)), np.array([0, 1, 0, 1, 3, 3]), site=SITE)
    with self.assertRaisesRegex(ValueError, r"pca at site 'hidden_0': num_components=5"):
      directions.pca(np.ones((6, 4)), 5, site=SITE)


if __name__ == "__main__":
  absltest.main()
