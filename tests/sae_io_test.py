"""SAEs in SAELens's file layout; SAE features as directions for transforms and interventions."""

import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from safetensors.numpy import save_file

from landscape import directions
from landscape import models
from landscape import sae as sae_lib
from landscape.sae import _training as sae_training
from landscape import transforms
from landscape.sites import BadInputError

D_IN, D_SAE = 12, 24


def _acts(shape=(16, D_IN), seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _sae(architecture, seed=0, dtype=jnp.float32, **options):
  if "topk" in architecture:
    options.setdefault("k", 3)
  sae = sae_lib.init_sae(jax.random.key(seed), architecture, D_IN, D_SAE, dtype=dtype, **options)
  rng = np.random.default_rng(seed)
  changes = dict(b_enc=0.1 * rng.normal(size=D_SAE), b_dec=0.3 * rng.normal(size=D_IN),
                 W_enc=rng.normal(size=(D_IN, D_SAE)) / 3)
  if architecture == "jumprelu":
    changes["threshold"] = rng.uniform(0.0, 0.3, size=D_SAE)
  changes = {name: jnp.asarray(value, dtype) for name, value in changes.items()}
  if architecture == "batchtopk":
    changes["threshold"] = jnp.float32(0.125)
  return sae.replace(**changes)


def _write(directory, config, arrays):
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "cfg.json"), "w") as handle:
    json.dump(config, handle)
  save_file({name: np.ascontiguousarray(value) for name, value in arrays.items()},
            os.path.join(directory, "sae_weights.safetensors"))


def _saelens_config(architecture, **extra):
  """cfg.json as SAELens 6's save_inference_model writes it (SAEConfig.to_dict)."""
  return {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
          "apply_b_dec_to_input": True, "normalize_activations": "none",
          "reshape_activations": "none",
          "metadata": {"sae_lens_version": "6.5.0", "sae_lens_training_version": "6.5.0",
                       "model_name": "gpt2", "hook_name": "blocks.3.hook_resid_post",
                       "hook_head_index": None, "prepend_bos": True, "context_size": 128},
          "architecture": architecture, **extra}


def _numpy_arrays(seed=1, threshold=False):
  rng = np.random.default_rng(seed)
  arrays = {"W_enc": rng.normal(size=(D_IN, D_SAE)), "W_dec": rng.normal(size=(D_SAE, D_IN)),
            "b_enc": 0.1 * rng.normal(size=D_SAE), "b_dec": 0.2 * rng.normal(size=D_IN)}
  if threshold:
    arrays["threshold"] = rng.uniform(0.0, 0.5, size=D_SAE)
  return {name: value.astype(np.float32) for name, value in arrays.items()}


class SAELensFileTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.directory = tempfile.mkdtemp()

  @parameterized.parameters(("topk", jnp.float32), ("batchtopk", jnp.float32),
                            ("jumprelu", jnp.float32), ("standard", jnp.float32),
                            ("topk", jnp.bfloat16))
  def test_round_trip_is_exact(self, architecture, dtype):
    sae = _sae(architecture, dtype=dtype)
    sae_lib.save_saelens(sae, self.directory, hook_name="hidden_0", metadata={"model_name": "m"})
    loaded = sae_lib.load_saelens(self.directory)
    self.assertIs(type(loaded.sae), type(sae))
    self.assertEqual(jax.tree_util.tree_structure(loaded.sae), jax.tree_util.tree_structure(sae))
    for got, want in zip(jax.tree_util.tree_leaves(loaded.sae), jax.tree_util.tree_leaves(sae)):
      self.assertEqual(got.dtype, want.dtype)
      np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    self.assertEqual(loaded.hook_name, "hidden_0")
    config = loaded.config
    self.assertEqual((config["d_in"], config["d_sae"]), (D_IN, D_SAE))
    self.assertEqual(config["metadata"], {"model_name": "m", "hook_name": "hidden_0"})
    self.assertEqual(config["dtype"], np.dtype(dtype).name)
    # What SAELens reads: BatchTopK as the JumpReLU it is at inference; k for TopK.
    expected = {"batchtopk": "jumprelu"}.get(architecture, architecture)
    self.assertEqual(config["architecture"], expected)
    if architecture == "topk":
      self.assertEqual(config["k"], 3)

  @parameterized.parameters("topk", "batchtopk", "jumprelu", "standard")
  def test_cfg_json_holds_what_saelens_reads(self, architecture):
    sae_lib.save_saelens(_sae(architecture), self.directory, hook_name="hidden_0",
                         metadata={"model_name": "mlp"})
    with open(os.path.join(self.directory, "cfg.json")) as handle:
      config = json.load(handle)
    # SAELens 6's SAEConfig fields (sae_lens/saes/sae.py), TopKSAEConfig's for TopK.
    expected = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
                "apply_b_dec_to_input": architecture != "jumprelu",
                "normalize_activations": "none", "reshape_activations": "none",
                "architecture": "jumprelu" if architecture == "batchtopk" else architecture}
    if architecture == "topk":
      expected.update(k=3, rescale_acts_by_decoder_norm=False)
    self.assertEqual({name: config.get(name) for name in expected}, expected)
    # No sae_lens_version: SAELens's handle_config_defaulting takes its pre-6 path, which builds
    # metadata from these top-level keys (its LLM_METADATA_KEYS).
    self.assertNotIn("sae_lens_version", config)
    self.assertNotIn("sae_lens_version", config["metadata"])
    self.assertEqual((config["hook_name"], config["model_name"]), ("hidden_0", "mlp"))
    self.assertEqual(config["metadata"], {"model_name": "mlp", "hook_name": "hidden_0"})
    with self.assertRaisesRegex(sae_lib.SAEFileError, r"metadata entries \['d_in'\]"):
      sae_lib.save_saelens(_sae(architecture), self.directory, hook_name="h", metadata={"d_in": 1})

  def test_a_file_written_in_saelens_layout_loads(self):
    # A Gemma-Scope-like JumpReLU SAE as SAELens 6 writes it.
    arrays = _numpy_arrays(threshold=True)
    _write(self.directory, _saelens_config("jumprelu", apply_b_dec_to_input=False), arrays)
    loaded = sae_lib.load_saelens(self.directory, width=D_IN)
    self.assertIsInstance(loaded.sae, sae_lib.JumpReLUSAE)
    self.assertEqual(loaded.hook_name, "blocks.3.hook_resid_post")
    x = _acts()
    w = {name: value.astype(np.float64) for name, value in arrays.items()}
    pre = x @ w["W_enc"] + w["b_enc"]  # apply_b_dec_to_input false: no b_dec subtracted
    codes = np.maximum(pre, 0) * (pre > w["threshold"])
    np.testing.assert_allclose(jax.jit(loaded.sae.encode)(x), codes, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(loaded.sae)(x), codes @ w["W_dec"] + w["b_dec"], rtol=1e-5,
                               atol=1e-5)

  def test_older_and_training_layouts_load(self):
    # SAELens before 6: hook_point at the top level, TopK as activation_fn_kwargs.
    arrays = _numpy_arrays()
    _write(self.directory, {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
                            "hook_point": "blocks.1.hook_resid_pre", "activation_fn": "topk",
                            "activation_fn_kwargs": {"k": 4}, "apply_b_dec_to_input": True}, arrays)
    old = sae_lib.load_saelens(self.directory)
    self.assertIsInstance(old.sae, sae_lib.TopKSAE)
    self.assertEqual((old.sae.k, old.hook_name), (4, "blocks.1.hook_resid_pre"))

    # A TopK training checkpoint with rescale_acts_by_decoder_norm: SAELens encodes with
    # pre * ||W_dec_i||, keeps the top k, and decodes codes / ||W_dec_i||.
    _write(self.directory, _saelens_config("topk", k=4, rescale_acts_by_decoder_norm=True), arrays)
    rescaled = sae_lib.load_saelens(self.directory).sae
    w = {name: value.astype(np.float64) for name, value in arrays.items()}
    norms = np.linalg.norm(w["W_dec"], axis=-1)
    x = _acts(seed=2)
    pre = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * norms
    order = np.argsort(-pre, axis=-1, kind="stable")[:, :4]
    codes = np.zeros_like(pre)
    np.put_along_axis(codes, order, np.maximum(np.take_along_axis(pre, order, -1), 0), -1)
    np.testing.assert_allclose(jax.jit(rescaled.encode)(x), codes, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(rescaled)(x), (codes / norms) @ w["W_dec"] + w["b_dec"],
                               rtol=1e-5, atol=1e-5)

    # A BatchTopK training checkpoint holds its one threshold as topk_threshold.
    _write(self.directory, _saelens_config("batchtopk", k=4.0),
           {**arrays, "topk_threshold": np.asarray(0.25, np.float64)})
    batch = sae_lib.load_saelens(self.directory).sae
    self.assertIsInstance(batch, sae_lib.BatchTopKSAE)
    self.assertEqual((batch.k, float(batch.threshold)), (4, 0.25))

  def test_mismatched_files_are_refused_with_both_shapes(self):
    arrays = _numpy_arrays()
    _write(self.directory, _saelens_config("standard", d_in=D_IN + 1), arrays)
    with self.assertRaisesRegex(sae_lib.SAEFileError,
                                r"W_enc has shape \(12, 24\), but cfg.json's d_in=13, d_sae=24 "
                                r"make it \(13, 24\)"):
      sae_lib.load_saelens(self.directory)
    _write(self.directory, _saelens_config("standard"),
           {**arrays, "W_dec": arrays["W_dec"][:, :-1]})
    with self.assertRaisesRegex(sae_lib.SAEFileError, r"W_dec has shape \(24, 11\).*\(24, 12\)"):
      sae_lib.load_saelens(self.directory)
    _write(self.directory, _saelens_config("jumprelu"), arrays)
    with self.assertRaisesRegex(sae_lib.SAEFileError, r"missing \['threshold'\]"):
      sae_lib.load_saelens(self.directory)
    _write(self.directory, _saelens_config("gated"), arrays)
    with self.assertRaisesRegex(sae_lib.SAEFileError, "unknown architecture 'gated'"):
      sae_lib.load_saelens(self.directory)
    _write(self.directory, _saelens_config("standard", normalize_activations="layer_norm"), arrays)
    with self.assertRaisesRegex(sae_lib.SAEFileError, "normalize_activations='layer_norm'"):
      sae_lib.load_saelens(self.directory)
    self.assertTrue(issubclass(sae_lib.SAEFileError, BadInputError))
    with self.assertRaisesRegex(sae_lib.SAEFileError, "no cfg.json"):
      sae_lib.load_saelens(os.path.join(self.directory, "absent"))

  def test_the_width_of_the_site_is_checked(self):
    _write(self.directory, _saelens_config("standard"), _numpy_arrays())
    with self.assertRaisesRegex(sae_lib.SAEFileError,
                                r"W_enc of shape \(12, 24\) \(d_in=12\) does not fit site "
                                r"'hidden_0', whose activation has shape \(8, 10\)"):
      sae_lib.load_saelens(self.directory, width=(8, 10), site="hidden_0")
    model = models.mlp(4, [10], 3)
    params = model.init(jax.random.key(0))
    shape = model.site_shapes(params, np.zeros((8, 4), np.float32))["hidden_0"].shape
    loaded = sae_lib.load_saelens(self.directory)
    with self.assertRaisesRegex(sae_lib.SAEFileError, r"\(12, 24\).*'blocks.3.hook_resid_post'.*"
                                r"\(8, 10\)"):
      sae_lib.check_sae_width(loaded.sae, shape, site=loaded.hook_name)


class FeaturesTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.sae = sae_training.normalize_decoder_rows(_sae("standard", seed=3))
    self.labels = sae_lib.feature_labels({"colour": [5, 2], "shape": 7, "size": [1, 2, 3]},
                                         d_sae=D_SAE)

  def test_labels_and_selection(self):
    np.testing.assert_array_equal(self.labels.indices("colour"), [2, 5])
    np.testing.assert_array_equal(np.nonzero(self.labels.mask("size"))[0], [1, 2, 3])
    select = lambda features: sae_lib.select_features(features, d_sae=D_SAE, labels=self.labels)
    np.testing.assert_array_equal(select(["colour", "size"]), [2, 5, 1, 3])
    np.testing.assert_array_equal(select(self.labels.mask("size")), [1, 2, 3])
    np.testing.assert_array_equal(select(4), [4])
    with self.assertRaisesRegex(BadInputError, r"no feature named 'texture'; known: \['colour'"):
      select("texture")
    with self.assertRaisesRegex(BadInputError, r"indices \[30\] outside \[0, d_sae=24\)"):
      sae_lib.feature_labels({"far": 30}, d_sae=D_SAE)
    with self.assertRaisesRegex(BadInputError, r"indices \[-1\] outside"):
      select([-1])
    with self.assertRaisesRegex(BadInputError, "need labels"):
      sae_lib.select_features("colour", d_sae=D_SAE)

  def test_basis_and_transform_directions_are_the_librarys(self):
    basis = sae_lib.feature_basis(self.sae, "size", site="hidden_0", labels=self.labels)
    expected = directions.sae_basis(np.asarray(self.sae.W_dec), [1, 2, 3], site="hidden_0")
    np.testing.assert_array_equal(basis.vectors, expected.vectors)
    self.assertEqual(basis.labels, ("size/1", "size/2", "size/3"))
    self.assertEqual(basis.method, "sae")

    model = models.mlp(5, [D_IN], 3)
    params = model.init(jax.random.key(0))
    built = sae_lib.feature_directions(self.sae, model.site_links, site="hidden_0",
                                       features="colour", labels=self.labels)
    direct = transforms.dictionary_directions({"hidden_0": self.sae.W_dec},
                                              {"hidden_0": np.asarray([2, 5])}, model.site_links)
    updates = jax.tree_util.tree_map(
        lambda leaf: jnp.asarray(np.random.default_rng(leaf.size).normal(size=leaf.shape),
                                 jnp.float32), params)
    projected = jax.jit(lambda u: transforms.project_out(built).update(u, None, params)[0])(updates)
    reference = transforms.project_out(direct).update(updates, None, params)[0]
    for got, want in zip(jax.tree_util.tree_leaves(projected),
                         jax.tree_util.tree_leaves(reference)):
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # The writing kernel's update (its output axis lives in the site's space) is orthogonal to
    # the selected decoder rows.
    rows = np.asarray(self.sae.W_dec)[[2, 5]]
    kernel = np.asarray(projected["hidden"]["0"]["kernel"])
    self.assertLess(np.abs(kernel @ rows.T).max(), 1e-5)

  def test_interventions(self):
    act = _acts((4, 3, D_IN), seed=5)
    row = np.asarray(self.sae.W_dec[7])
    steered = jax.jit(sae_lib.steer_feature(self.sae, "shape", 2.5, labels=self.labels))(act)
    np.testing.assert_allclose(steered - act, np.broadcast_to(2.5 * row, act.shape), atol=1e-5)

    ablated = jax.jit(sae_lib.ablate_features(self.sae, "colour", site="hidden_0",
                                              labels=self.labels))(act)
    self.assertLess(np.abs(np.asarray(ablated) @ np.asarray(self.sae.W_dec)[[2, 5]].T).max(), 1e-5)

    clamped = jax.jit(sae_lib.clamp_feature(self.sae, 7, 1.5))(act)
    np.testing.assert_allclose(np.asarray(clamped) @ (row / np.linalg.norm(row)), 1.5, atol=1e-5)
    with self.assertRaisesRegex(BadInputError, "stands for 2 features"):
      sae_lib.clamp_feature(self.sae, "colour", 1.0, labels=self.labels)

    values = np.asarray([0.0, 3.0], np.float32)
    edit = sae_lib.clamp_codes(self.sae, "colour", values, labels=self.labels)
    self.assertEqual(edit.width, D_IN)
    codes = np.asarray(self.sae.encode(act))[..., [2, 5]]
    expected = act + (values - codes) @ np.asarray(self.sae.W_dec)[[2, 5]]
    np.testing.assert_allclose(jax.jit(edit)(act), expected, rtol=1e-5, atol=1e-5)
    backward = sae_lib.clamp_codes(self.sae, [2, 5], values, backward_only=True)
    np.testing.assert_array_equal(jax.jit(backward)(act), act)


if __name__ == "__main__":
  absltest.main()
