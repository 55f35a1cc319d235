"""Concept attribution, piece by piece: the attribution on a small GPT against float64 NumPy (over
one site's writers and over the whole residual stream's), the span shares, the parameters the gains
cover, the gain transform and the feature spans it reads as data, the skill labelling's probes,
the jobs' grids, the criteria (pre-registered, post hoc and declared) judged on planted results,
and the configs' validation."""

import dataclasses
import re
import types

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from scipy import stats

from configs import concept_attribution as experiment_config
from landscape import analysis
from landscape import concept_attribution
from landscape import sae as sae_lib
from landscape import transforms
from landscape.concept_attribution import _arms
from landscape.concept_attribution import _criteria
from landscape.concept_attribution import _measures
from landscape.concept_attribution import _results
from landscape.concept_attribution import _setting
from landscape.concept_attribution import scale_along_by
from landscape.sites import BadInputError
from landscape.training import ConfigError

SITE = "blocks.0.resid_post"


def _small_setting(d_sae=24, seed=0, coverage="stream"):
  config = experiment_config.get_config("smoke")
  world = _setting.make_world(config)
  model = _setting.make_model(config, world)
  params = model.init(jax.random.PRNGKey(seed))
  sae = sae_lib.init_sae(jax.random.PRNGKey(seed + 1), "topk", config.model.d_model, d_sae, k=4)
  return types.SimpleNamespace(model=model, sae=sae, site=SITE, coverage=coverage), params


def _stream_writer_vectors(update):
  """Every vector the writers of the residual stream put into it (one block: the token and
  position embedding rows, then block 0's outputs), float64."""
  as64 = lambda leaf: np.asarray(leaf, np.float64)
  return np.concatenate([as64(update["token_embed"]["embedding"]),
                         as64(update["position_embed"]["embedding"]), _writer_vectors(update)])


def _random_update(params, seed):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda leaf: jnp.asarray(rng.normal(size=leaf.shape), jnp.float32),
                                params)


def _writer_vectors(update):
  """Every vector the writes of blocks.0.resid_post put into the stream, float64: the rows of the
  attention and MLP output kernels (their output axis) and their biases."""
  block = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf, np.float64), update["blocks"]["0"])
  attention, mlp = block["attention"]["out"], block["mlp"]["out"]
  return np.concatenate([attention["kernel"], attention["bias"][None], mlp["kernel"],
                         mlp["bias"][None]])


def _span_and_update(setting, params, features, *, seed: int):
  """The span of ``features``' decoder rows at the site's writers, and a random params-shaped
  update (float32 normal draws of ``seed``)."""
  directions = sae_lib.feature_directions(setting.sae, setting.model.site_links, site=SITE,
                                          features=features, roles=("writes",))
  rng = np.random.default_rng(seed)
  update = jax.tree_util.tree_map(lambda leaf: jnp.asarray(rng.normal(size=leaf.shape),
                                                           jnp.float32), params)
  return directions, update

class AttributionTest(parameterized.TestCase):

  @parameterized.parameters("site", "stream")
  def test_matches_a_float64_reference_on_a_small_gpt(self, coverage):
    setting, params = _small_setting(coverage=coverage)
    update = _random_update(params, 0)
    tx = transforms.attribute(_measures.attribution_directions(setting))
    _, state = jax.jit(tx.update)(update, tx.init(params))
    u = _writer_vectors(update) if coverage == "site" else _stream_writer_vectors(update)
    rows = np.asarray(setting.sae.W_dec, np.float64)
    squared = np.sum(np.square(u @ rows.T), axis=0)
    share = squared / (np.sum(np.square(u)) * np.sum(np.square(rows), axis=1))
    # float32 HIGHEST matmuls over a Gram matrix of ~80 vectors of width 16: ~1e-6 relative.
    np.testing.assert_allclose(state.metrics[f"{SITE}/magnitude"], np.sqrt(squared), rtol=1e-4)
    np.testing.assert_allclose(state.metrics[f"{SITE}/share"], share, rtol=1e-4)

  def test_span_shares_match_a_float64_reference(self):
    setting, params = _small_setting(d_sae=40)
    update = _random_update(params, 1)
    rows = np.asarray(setting.sae.W_dec, np.float64)
    groups = [np.array([0, 3, 7]), np.array([1, 2, 5, 11, 19]), np.arange(40)]
    bases = np.zeros((3, 16, 16))
    for index, group in enumerate(groups):
      basis = np.linalg.svd(rows[group], full_matrices=False)[2]
      bases[index, :len(basis)] = basis
    directions = _measures.attribution_directions(setting)
    shares, norm = jax.jit(lambda u: _measures.span_shares(directions, u, jnp.asarray(bases)))(
        update)
    u = _stream_writer_vectors(update)
    reference = [np.sum(np.square(u @ basis.T)) / np.sum(np.square(u)) for basis in bases]
    # One 16 x 16 Gram over ~60 float32 vectors, HIGHEST: ~1e-6 relative.
    np.testing.assert_allclose(shares, reference, rtol=1e-5)
    np.testing.assert_allclose(norm, np.linalg.norm(u), rtol=1e-5)
    self.assertAlmostEqual(float(shares[2]), 1.0, places=5)  # 40 rows span all 16 dimensions
    # Complementary orthogonal spans share the whole norm; a zero update has no share.
    complement = np.linalg.svd(np.eye(16) - bases[0].T @ bases[0])[0][:, :13].T
    split = np.zeros((2, 13, 16))
    split[0, :3], split[1] = bases[0][:3], complement
    halves, _ = _measures.span_shares(directions, update, jnp.asarray(split))
    self.assertAlmostEqual(float(np.sum(halves)), 1.0, places=5)
    zeros, _ = _measures.span_shares(
        directions, jax.tree_util.tree_map(jnp.zeros_like, update), jnp.asarray(bases))
    np.testing.assert_array_equal(zeros, np.zeros(3))

  def test_span_share_attribution_logs_every_set_and_null_group(self):
    setting, params = _small_setting()
    setting.groups = types.SimpleNamespace(
        style=np.array([1, 4, 7]), skill=np.array([0, 2, 9]), random=np.array([5, 11, 13]),
        by_activation=np.array([3, 4, 20]), null_groups=np.array([[6, 8, 10], [12, 14, 15]]))
    update = _random_update(params, 6)
    tx = _measures.span_share_attribution(setting)
    out, state = jax.jit(tx.update)(update, tx.init(params))
    for given, passed in zip(jax.tree_util.tree_leaves(update), jax.tree_util.tree_leaves(out)):
      np.testing.assert_array_equal(passed, given)  # reported, not changed
    logged = np.asarray(state.metrics[f"{SITE}/span_share"])
    self.assertEqual(logged.shape, (6,))
    rows = np.asarray(setting.sae.W_dec, np.float64)
    u = _stream_writer_vectors(update)
    groups = [setting.groups.style, setting.groups.skill, setting.groups.random,
              setting.groups.by_activation, *setting.groups.null_groups]
    for index, group in enumerate(groups):
      basis = np.linalg.qr(rows[group].T)[0].T
      expected = np.sum(np.square(u @ basis.T)) / np.sum(np.square(u))
      self.assertAlmostEqual(float(logged[index]), expected, delta=1e-5, msg=str(group))
    shares = _measures.group_span_shares(logged)
    self.assertAlmostEqual(float(shares.null), float(np.mean(logged[4:])), places=6)
    self.assertEqual(shares.style, logged[0])
    self.assertEqual(_measures.SHARE_NAMES, (*_setting.FEATURE_SETS, "null"))
    with self.assertRaisesRegex(BadInputError, "no null group"):
      _measures.group_span_shares(logged[:4])
    # Criterion 1's pre-registered quantity: ||U d_k|| over the site's writers only.
    magnitude = np.asarray(state.metrics[f"{SITE}/site_writer_magnitude"], np.float64)
    site_u = _writer_vectors(update)
    # d^T (U^T U) d through a float32 Gram matrix: ~1e-7 ||U||^2 absolute on the squares.
    np.testing.assert_allclose(np.square(magnitude), np.sum(np.square(site_u @ rows.T), axis=0),
                               rtol=1e-4, atol=1e-6 * np.sum(np.square(site_u)))
    # Bases and rows given through extra args (a live SAE's) replace the fixed ones.
    live = _measures.span_share_attribution(setting, bases_arg="bases", rows_arg="rows")
    other = np.random.default_rng(3).normal(size=rows.shape)
    bases = np.stack([np.linalg.qr(other[group].T)[0].T for group in groups])
    _, live_state = jax.jit(live.update)(update, live.init(params), None,
                                         bases=jnp.asarray(bases, jnp.float32),
                                         rows={SITE: jnp.asarray(other, jnp.float32)})
    expected = [np.sum(np.square(u @ basis.T)) / np.sum(np.square(u)) for basis in bases]
    np.testing.assert_allclose(live_state.metrics[f"{SITE}/span_share"], expected, atol=1e-5)
    np.testing.assert_allclose(np.square(live_state.metrics[f"{SITE}/site_writer_magnitude"]),
                               np.sum(np.square(site_u @ other.T), axis=0), rtol=1e-4,
                               atol=1e-6 * np.sum(np.square(site_u)) * np.max(np.sum(
                                   np.square(other), axis=1)))
    with self.assertRaisesRegex(BadInputError, "'bases'"):
      live.update(update, live.init(params), None, rows={SITE: other})

  def test_span_share_bases_from_rows_with_a_rank_deficient_group(self):
    """The bases are built from the decoder rows (float64, `transforms.span_basis`'s rank cut): a
    group whose rows span less than its size gets zero rows past its rank, and its span share is
    the float64 projector's."""
    setting, params = _small_setting(d_sae=24)
    rows = np.asarray(setting.sae.W_dec, np.float64).copy()
    rows[9] = 2.0 * rows[4] - rows[1]  # group [1, 4, 9] spans 2 dimensions
    setting.sae = dataclasses.replace(setting.sae, W_dec=jnp.asarray(rows, jnp.float32))
    rows = np.asarray(setting.sae.W_dec, np.float64)
    setting.groups = types.SimpleNamespace(
        style=np.array([1, 4, 9]), skill=np.array([0, 2, 5]), random=np.array([6, 11, 13]),
        by_activation=np.array([3, 7, 20]), null_groups=np.array([[8, 10, 12]]))
    bases = np.asarray(_measures.span_share_bases(setting), np.float64)
    self.assertEqual(bases.shape, (5, 3, 16))
    self.assertLess(np.linalg.norm(bases[0][2]), 1e-6)     # past the rank: a zero row
    np.testing.assert_allclose(bases[0][:2] @ bases[0][:2].T, np.eye(2), atol=1e-6)
    update = _random_update(params, 11)
    shares, _ = _measures.span_shares(_measures.attribution_directions(setting), update,
                                      jnp.asarray(bases, jnp.float32))
    u = _stream_writer_vectors(update)
    # The dependent group's span is that of rows 1 and 4 (row 9 adds only float32 rounding).
    for index, group in enumerate([[1, 4], [0, 2, 5], [6, 11, 13], [3, 7, 20], [8, 10, 12]]):
      projector = np.linalg.pinv(rows[group]) @ rows[group]  # (D, D) onto the rows' span
      expected = np.sum(np.square(u @ projector)) / np.sum(np.square(u))
      # float32 float64-derived bases and Gram: ~1e-6 relative (float32 rounding of the
      # nearly dependent rows included).
      self.assertAlmostEqual(float(shares[index]), expected, delta=2e-5, msg=str(group))

  def test_scanned_layers_coverage_and_span_shares(self):
    """With scan_layers the blocks' parameters are stacked (L, ...): every layer's writers are
    linked once, by stack index, and the span shares read each layer's slice."""
    config = experiment_config.get_config("smoke")
    world = _setting.make_world(config)
    from landscape import models  # pylint: disable=g-import-not-at-top
    model = models.gpt(models.GPTConfig(vocab_size=world.vocab_size, max_len=world.seq_len,
                                        d_model=16, num_layers=2, num_heads=2,
                                        positions="learned", scan_layers=True))
    params = model.init(jax.random.PRNGKey(0))
    sae = sae_lib.init_sae(jax.random.PRNGKey(1), "topk", 16, 24, k=4)
    setting = types.SimpleNamespace(model=model, sae=sae, site=SITE, coverage="stream")
    links = _setting.coverage_links(model, SITE, "stream", ("writes", "reads"))[SITE]
    keys = [("/".join(link.path), link.axis, link.index) for link in links]
    self.assertLen(set(keys), len(keys))
    self.assertEqual(sorted(key[2] for key in keys if key[0] == "blocks/mlp/out/kernel"), [0, 1])
    update = _random_update(params, 12)
    rows = np.asarray(sae.W_dec, np.float64)
    basis = _measures.span_basis_float64(rows[[2, 5, 8]])
    shares, _ = _measures.span_shares(_measures.attribution_directions(setting), update,
                                      jnp.asarray(basis[None], jnp.float32))
    as64 = lambda leaf: np.asarray(leaf, np.float64)
    blocks = update["blocks"]
    u = np.concatenate([as64(update["token_embed"]["embedding"]),
                        as64(update["position_embed"]["embedding"])]
                       + [as64(blocks[name]["out"][kind][layer]).reshape(-1, 16)
                          for layer in range(2) for name in ("attention", "mlp")
                          for kind in ("kernel", "bias")])
    expected = np.sum(np.square(u @ basis.T)) / np.sum(np.square(u))
    self.assertAlmostEqual(float(shares[0]), expected, delta=1e-5)

  def test_scale_along_by_reads_its_gain(self):
    setting, params = _small_setting()
    directions, update = _span_and_update(setting, params, np.array([1, 4, 7]), seed=2)
    for gain in (0.0, -1.0, 2.5):
      by_arg = scale_along_by(directions, "gain")
      out, _ = jax.jit(by_arg.update)(update, by_arg.init(params), None,
                                      gain=jnp.asarray(gain, jnp.float32))
      fixed = transforms.scale_along(directions, gain)
      expected, _ = fixed.update(update, fixed.init(params))
      jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), out,
                             expected)

  def test_scale_along_by_at_gains_one_and_zero(self):
    setting, params = _small_setting()
    chosen = np.array([1, 4, 7])
    directions, update = _span_and_update(setting, params, chosen, seed=3)
    by_arg = scale_along_by(directions, "gain")
    apply = jax.jit(by_arg.update)
    bits = lambda tree: [np.asarray(leaf).view(np.uint32)
                         for leaf in jax.tree_util.tree_leaves(tree)]
    # Gain 1: the update itself, bit for bit (no signed zeros in it; -0.0 would come back +0.0).
    kept, _ = apply(update, by_arg.init(params), None, gain=jnp.ones((), jnp.float32))
    for out, given in zip(bits(kept), bits(update)):
      np.testing.assert_array_equal(out, given)
    # Gain 0: project_out's result bit for bit, and u (I - P) of the float64 span projector P.
    removed, _ = apply(update, by_arg.init(params), None, gain=jnp.zeros((), jnp.float32))
    project_out = transforms.project_out(directions)
    expected, _ = project_out.update(update, project_out.init(params))
    for out, given in zip(bits(removed), bits(expected)):
      np.testing.assert_array_equal(out, given)
    rows = np.asarray(setting.sae.W_dec, np.float64)[chosen]
    basis = np.linalg.qr(rows.T)[0].T                       # (3, D) orthonormal, float64
    u = _writer_vectors(update)
    reference = u - (u @ basis.T) @ basis
    # ~80 vectors of width 16 in float32 HIGHEST: the residual along the span ~1e-7 of ||u||.
    np.testing.assert_allclose(_writer_vectors(removed), reference, atol=1e-5)
    self.assertLess(np.linalg.norm(_writer_vectors(removed) @ basis.T), 1e-5 * np.linalg.norm(u))

  def test_gain_scales_the_groups_attribution_by_its_size(self):
    """scale_along_by(g) before attribute: each chosen feature's magnitude becomes |g| times the
    magnitude without gains (P d_k = d_k), so the arms attribute the update they apply."""
    setting, params = _small_setting(coverage="site")  # the span acts on the site's writers
    chosen = np.array([2, 5, 11])
    directions, update = _span_and_update(setting, params, chosen, seed=4)
    attribution = transforms.attribute(_measures.attribution_directions(setting))
    _, before = attribution.update(update, attribution.init(params))
    before = np.asarray(before.metrics[f"{SITE}/magnitude"], np.float64)
    norm_squared = np.sum(np.square(_writer_vectors(update)))
    for gain in (0.0, -1.0, 3.0):
      chain = optax.chain(scale_along_by(directions, "gain"), attribution)
      _, state = jax.jit(chain.update)(update, chain.init(params), None,
                                       gain=jnp.asarray(gain, jnp.float32))
      after = np.asarray(state[1].metrics[f"{SITE}/magnitude"], np.float64)
      # Squared magnitudes: d^T G d through the float32 Gram matrix G = U^T U (24 rows > 16
      # dimensions) errs by ~1e-7 ||U||^2 absolute, so a magnitude near 0 reads ~3e-4 ||U||.
      np.testing.assert_allclose(np.square(after[chosen]), gain**2 * np.square(before[chosen]),
                                 rtol=1e-4, atol=1e-6 * (1 + gain**2) * norm_squared)

  def test_scale_along_by_names_a_missing_gain(self):
    setting, params = _small_setting()
    directions = sae_lib.feature_directions(setting.sae, setting.model.site_links, site=SITE,
                                            features=np.array([0]), roles=("writes",))
    by_arg = scale_along_by(directions, "style_gain")
    with self.assertRaisesRegex(transforms.DirectionsError, "'style_gain'.*'skill_gain'"):
      by_arg.update(params, by_arg.init(params), None, skill_gain=1.0)

  def test_feature_spans_are_each_sets_span_and_picked_by_index(self):
    """The gain jobs' spans are data: the stacked bases equal each set's float64 span, and a
    gain whose span arrives through its extra arg (picked by index, as `_feature_gains` does)
    computes what `scale_along` with that set's span fixed computes."""
    setting, params = _small_setting()
    chosen = {"style": [1, 4, 7], "skill": [0, 2, 9], "random": [5, 11, 13],
              "by_activation": [3, 4, 20]}
    setting.groups = types.SimpleNamespace(**{name: np.asarray(chosen[name])
                                              for name in _setting.FEATURE_SETS})
    config = experiment_config.get_config("smoke")
    spans = _measures.feature_spans(setting)
    self.assertEqual(spans.bases_GxRxD.shape, (4, 3, 16))
    rows = np.asarray(setting.sae.W_dec, np.float64)
    for index, name in enumerate(_setting.FEATURE_SETS):
      basis = np.asarray(spans.bases_GxRxD[index], np.float64)
      reference = np.linalg.qr(rows[chosen[name]].T)[0]          # (D, 3) orthonormal, float64
      # float32 storage of a float64 SVD basis: orthonormal to ~1e-7; the same projector.
      np.testing.assert_allclose(basis @ basis.T, np.eye(3), atol=1e-6)
      np.testing.assert_allclose(basis.T @ basis, reference @ reference.T, atol=1e-6)
    rng = np.random.default_rng(5)
    update = jax.tree_util.tree_map(lambda leaf: jnp.asarray(rng.normal(size=leaf.shape),
                                                             jnp.float32), params)
    held = _arms.feature_span(setting, chosen["style"], config, extra_arg="span")
    by_index = scale_along_by(held, "gain")
    apply = jax.jit(lambda update, index, gain: by_index.update(
        update, by_index.init(params), None, gain=gain,
        span={SITE: spans.bases_GxRxD[index]})[0])
    for index, name in enumerate(_setting.FEATURE_SETS):
      fixed = transforms.scale_along(_arms.feature_span(setting, chosen[name], config), -1.0)
      expected, _ = fixed.update(update, fixed.init(params))
      got = apply(update, jnp.asarray(index, jnp.int32), jnp.asarray(-1.0, jnp.float32))
      jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), got,
                             expected)

  def test_stream_coverage_links_every_writer_and_reader_once(self):
    config = experiment_config.get_config("")  # two blocks
    world = _setting.make_world(config)
    model = _setting.make_model(config, world)
    links = _setting.coverage_links(model, SITE, "stream", ("writes", "reads"))[SITE]
    keys = [("/".join(link.path), link.axis, link.index) for link in links]
    self.assertLen(set(keys), len(keys))  # the tied token table (writer and reader) once
    expected = {"token_embed/embedding", "position_embed/embedding"}
    for block in range(2):
      expected |= {f"blocks/{block}/{dense}/{kind}" for dense in ("attention/out", "mlp/out")
                   for kind in ("kernel", "bias")}
      expected |= {f"blocks/{block}/attention/qkv/kernel", f"blocks/{block}/mlp/hidden/kernel"}
    self.assertEqual({path for path, _, _ in keys}, expected)
    writers = _setting.coverage_links(model, SITE, "stream", ("writes",))[SITE]
    self.assertTrue(all(link.role == "writes" for link in writers))
    self.assertLen(writers, 10)  # two embeddings, four outputs of each block
    site_only = _setting.coverage_links(model, SITE, "site", ("writes", "reads"))[SITE]
    self.assertEqual(site_only, tuple(model.site_links[SITE]))
    with self.assertRaisesRegex(BadInputError, "coverage='everywhere'"):
      _setting.coverage_links(model, SITE, "everywhere", ("writes",))

  @parameterized.parameters(0.0, 0.5, -1.0)
  def test_stream_gain_scales_the_span_once_on_every_covered_parameter(self, gain):
    # Gain 0 is idempotent (a projection applied twice is itself); 0.5 and -1 would show a
    # parameter scaled twice (the tied token table, writer and reader) as gain**2.
    setting, params = _small_setting()
    config = experiment_config.get_config("smoke")
    chosen = np.array([1, 4, 7])
    update = _random_update(params, 7)
    removed, _ = jax.jit(lambda u: scale_along_by(
        _arms.feature_span(setting, chosen, config), "gain").update(
            u, optax.EmptyState(), None, gain=jnp.asarray(gain, jnp.float32)))(update)
    basis = np.linalg.qr(np.asarray(setting.sae.W_dec, np.float64)[chosen].T)[0].T
    as64 = lambda tree, *path: np.asarray(_at(tree, path), np.float64)
    covered = [(("token_embed", "embedding"), 1), (("position_embed", "embedding"), 1),
               (("blocks", "0", "attention", "out", "kernel"), 1),
               (("blocks", "0", "attention", "out", "bias"), 0),
               (("blocks", "0", "mlp", "out", "kernel"), 1),
               (("blocks", "0", "mlp", "out", "bias"), 0),
               (("blocks", "0", "attention", "qkv", "kernel"), 0),
               (("blocks", "0", "mlp", "hidden", "kernel"), 0)]
    for path, axis in covered:
      u = np.moveaxis(as64(update, *path), axis, -1)
      out = np.moveaxis(as64(removed, *path), axis, -1)
      # float32 HIGHEST on vectors of width 16: the residual along the span ~1e-7 of |u|.
      np.testing.assert_allclose(out, u - (1.0 - gain) * (u @ basis.T) @ basis, atol=1e-5,
                                 err_msg=str(path))
    untouched = {"/".join(str(getattr(key, "key", key)) for key in keypath)
                 for keypath, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    untouched -= {"/".join(path) for path, _ in covered}
    self.assertNotEmpty(untouched)  # the LayerNorm scales and biases, the MLP's hidden bias
    flat_in = {jax.tree_util.keystr(keypath): leaf
               for keypath, leaf in jax.tree_util.tree_flatten_with_path(update)[0]}
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(removed)[0]:
      name = "/".join(str(getattr(key, "key", key)) for key in keypath)
      if name in untouched:
        np.testing.assert_array_equal(leaf, flat_in[jax.tree_util.keystr(keypath)], err_msg=name)

  def test_rank_correlation(self):
    self.assertAlmostEqual(_measures.rank_correlation([1, 2, 3, 4], [10, 20, 25, 40]), 1.0)
    self.assertAlmostEqual(_measures.rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]), -1.0)
    self.assertEqual(_measures.rank_correlation([1, 1, 1], [1, 2, 3]), 0.0)


def _at(tree, path):
  for key in path:
    tree = tree[key]
  return tree


class LabellingTest(absltest.TestCase):

  def test_wrong_answers_change_only_the_answer_and_are_wrong(self):
    config = experiment_config.get_config("smoke")
    world = _setting.make_world(config)
    content = _setting.pirate.sample_content(world, jax.random.PRNGKey(3), 200,
                                             arithmetic_rate=1.0, correct_rate=1.0)
    wrong = _setting.wrong_answers(world, content, jax.random.PRNGKey(4))
    problem, changed = np.asarray(content.problem), np.asarray(wrong.problem)
    answer = _setting.pirate.ANSWER_INDEX
    np.testing.assert_array_equal(np.delete(changed, answer, 1), np.delete(problem, answer, 1))
    np.testing.assert_array_equal(problem[:, answer], (problem[:, 0] + problem[:, 2]) % 10)
    self.assertTrue(np.all(changed[:, answer] != problem[:, answer]))
    self.assertTrue(np.all((changed[:, answer] >= 0) & (changed[:, answer] < 10)))
    self.assertFalse(np.any(np.asarray(wrong.correct)))
    np.testing.assert_array_equal(wrong.prose, content.prose)

  def test_paired_t_matches_scipy(self):
    rng = np.random.default_rng(8)
    difference = rng.normal(0.3, 1.0, size=(50, 4))
    difference[:, 3] = 0.0  # a feature that never varies scores 0
    expected = stats.ttest_rel(difference[:, :3] + 1.0, np.ones((50, 3))).statistic
    np.testing.assert_allclose(_setting.paired_t(difference)[:3], expected, rtol=1e-10)
    self.assertEqual(_setting.paired_t(difference)[3], 0.0)

  def test_labels_are_disjoint_and_controls_are_active_features(self):
    setting, params = _small_setting(d_sae=40)
    config = experiment_config.get_config("smoke")
    probes = _setting.probe_sets(config, _setting.make_world(config))
    groups = _setting.label_features(setting.sae, setting.model, params, probes, site=SITE,
                                     group_size=3, seed=9, null_groups=5)
    self.assertEqual(groups.null_groups.shape, (5, 3))
    labelled = set(groups.style) | set(groups.skill)
    self.assertLen(labelled, 6)
    codes = [np.asarray(_setting.site_codes(setting.sae, setting.model, params,
                                            jnp.asarray(batch["inputs"]), SITE)).mean(0)
             for _, batch in probes.items()]
    active = np.max(codes, axis=0) > 0
    for group in (groups.random, *groups.null_groups):
      self.assertLen(set(group), 3)
      self.assertFalse(set(group) & labelled)
      self.assertTrue(np.all(active[group]), group)

  def test_activation_matched_groups_draw_near_each_style_feature(self):
    activity = np.arange(40, dtype=np.float64)         # feature f's mean code is f
    style = np.array([10, 30])
    pool = np.setdiff1d(np.arange(40), [10, 30, 11])
    rng = np.random.default_rng(0)
    drawn = [_setting.activation_matched_group(style, pool, activity, rng) for _ in range(200)]
    for group in drawn:
      self.assertLen(set(group), 2)
      self.assertTrue(set(group) <= set(pool))
      # one within the 3 nearest of 10 in the pool (9, 12, and 8 or 13), one within those of 30
      low, high = sorted(group)
      self.assertLessEqual(abs(low - 10), 3, group)
      self.assertLessEqual(abs(high - 30), 2, group)
    self.assertGreater(len({tuple(group) for group in drawn}), 4)  # random, not one fixed group
    with self.assertRaisesRegex(BadInputError, "pool of 1 features for a group of 2"):
      _setting.activation_matched_group(style, pool[:1], activity, rng)


def _result(arm, *, style=None, skill=None, point=None, magnitude=None, skill_curve=None,
            steps=100, seeds=(0, 1, 2, 3, 4)):
  seeds = list(seeds)
  final = {}
  if style is not None:
    final[_results.STYLE_RATE] = np.asarray(style, np.float64)
  if skill is not None:
    final[_results.SKILL_ACCURACY] = np.asarray(skill, np.float64)
  curves = {}
  if skill_curve is not None:
    curves[_results.SKILL_ACCURACY] = skill_curve
  attribution = {} if magnitude is None else {_criteria.SITE_WRITER_MAGNITUDE: magnitude}
  return _results.ArmResult(arm=arm, family="baseline", point=point or {}, seeds=seeds,
                            steps=steps, final=final, curves=curves, attribution=attribution,
                            mean_code=np.zeros((1, len(seeds), 1)))


def _criterion(name):
  return next(c for c in _criteria.PREREGISTERED + _criteria.DECLARED if c.name.startswith(name))


def _masks(num_features=10, style=()):
  style_mask = np.isin(np.arange(num_features), style)
  empty = np.zeros(num_features, bool)
  return _setting.GroupMasks(style=style_mask, skill=empty, random=empty, other=~style_mask)


def _evidence(results, masks=None, threshold=0.9, long_factor=5):
  return _criteria.Evidence(results, masks or _masks(), threshold, long_factor)


def _skill_curve(first_reached, steps=(0, 20, 40, 60)):
  """(steps, (E, S) accuracies) reaching 0.95 at each seed's ``first_reached`` step (None: never,
  0.5 throughout)."""
  steps = np.asarray(steps)
  values = np.stack([np.full(len(steps), 0.5) if reached is None else
                     np.where(steps >= reached, 0.95, 0.5) for reached in first_reached], axis=1)
  return steps, values


class CriteriaTest(absltest.TestCase):

  def test_style_on_top_counts_seeds(self):
    num_features, seeds = 10, 5
    masks = _masks(num_features, style=np.arange(3))
    steps = np.array([10, 20, 60])
    magnitude = np.ones((3, seeds, num_features))
    magnitude[:2, :4, :3] = 5.0          # seeds 0-3: the style features lead by step 50
    magnitude[:2, 4, 5:] = 5.0           # seed 4: other features lead by step 50,
    magnitude[2, 4, :3] = 50.0           # the style features only after it
    plain = _result("plain", magnitude=(steps, magnitude))
    verdict = _criteria.evaluate(_criterion("1."), _evidence([plain], masks))
    self.assertEqual(verdict.outcome, analysis.HOLDS)
    self.assertEqual(verdict.numbers["style_in_top"], [3, 3, 3, 3, 0])
    magnitude[:2, 3, 5:] = 9.0           # now only 3 of 5 seeds
    verdict = _criteria.evaluate(_criterion("1."), _evidence([plain], masks))
    self.assertEqual(verdict.outcome, analysis.FAILS)
    # The declared 1w ranks the stream writers' magnitudes, the pre-registered 1 the site's.
    stream = np.ones((3, seeds, num_features))
    stream[:2, :, :3] = 5.0
    plain.attribution[_criteria.STREAM_MAGNITUDE] = (steps, stream)
    self.assertEqual(_criteria.evaluate(_criterion("1w."), _evidence([plain], masks)).outcome,
                     analysis.HOLDS)
    self.assertEqual(_criteria.evaluate(_criterion("1."), _evidence([plain], masks)).outcome,
                     analysis.FAILS)

  def test_suppression_needs_both_parts(self):
    plain = _result("plain", style=[0.9, 0.8, 0.85, 0.95, 0.9], skill=[0.9] * 5)
    halved = _result("suppress", point={"style_gain": 0.0}, style=[0.1, 0.2, 0.15, 0.1, 0.2],
                     skill=[0.9, 0.905, 0.895, 0.9, 0.9])
    evidence = _evidence([plain, halved])
    self.assertEqual(_criteria.evaluate(_criterion("2."), evidence).outcome, analysis.HOLDS)
    worse_skill = _result("suppress", point={"style_gain": 0.0},
                          style=[0.1, 0.2, 0.15, 0.1, 0.2], skill=[0.5, 0.52, 0.48, 0.5, 0.5])
    evidence = _evidence([plain, worse_skill])
    verdict = _criteria.evaluate(_criterion("2."), evidence)
    self.assertEqual(verdict.outcome, analysis.FAILS)
    self.assertIn("-0.400", verdict.sentence)

  def test_not_run(self):
    evidence = _evidence([_result("plain", style=[0.5] * 5)])
    verdict = _criteria.evaluate(_criterion("5."), evidence)
    self.assertEqual(verdict.outcome, _criteria.NOT_RUN)
    self.assertIn("suppress_long", verdict.sentence)

  def test_steps_to_threshold_censors(self):
    steps = np.array([0, 20, 40, 60])
    values = np.array([[0.1, 0.1], [0.5, 0.95], [0.92, 0.97], [0.93, 0.99]])
    result = _result("plain", skill_curve=(steps, values), seeds=(0, 1), steps=60)
    np.testing.assert_array_equal(_criteria.steps_to_threshold(result, 0.9), [40, 20])
    np.testing.assert_array_equal(_criteria.steps_to_threshold(result, 0.995), [80, 80])

  def test_amplification_is_inconclusive_when_both_arms_are_censored(self):
    # Neither arm reaches 0.9 in any seed: both censored at 80, a difference of 0 that is not a tie.
    plain = _result("plain", skill_curve=_skill_curve([None] * 3), seeds=(0, 1, 2), steps=60)
    amplify = _result("amplify", skill_curve=_skill_curve([None] * 3), seeds=(0, 1, 2), steps=60)
    verdict = _criteria.evaluate(_criterion("4."), _evidence([plain, amplify]))
    self.assertEqual(verdict.outcome, analysis.INCONCLUSIVE)
    self.assertEqual(verdict.numbers["both_censored"], 3)
    self.assertIn("neither arm reaches", verdict.sentence)
    # One seed censored in both arms: still unknown, still inconclusive.
    plain = _result("plain", skill_curve=_skill_curve([60, 60, None]), seeds=(0, 1, 2), steps=60)
    amplify = _result("amplify", skill_curve=_skill_curve([20, 20, None]), seeds=(0, 1, 2),
                      steps=60)
    verdict = _criteria.evaluate(_criterion("4."), _evidence([plain, amplify]))
    self.assertEqual(verdict.outcome, analysis.INCONCLUSIVE)
    self.assertEqual(verdict.numbers["both_censored"], 1)
    # Plain censored, amplify reaching it in every seed: 80 - 20 = 60 steps saved, holds.
    plain = _result("plain", skill_curve=_skill_curve([None] * 3), seeds=(0, 1, 2), steps=60)
    amplify = _result("amplify", skill_curve=_skill_curve([20, 20, 40]), seeds=(0, 1, 2),
                      steps=60)
    verdict = _criteria.evaluate(_criterion("4."), _evidence([plain, amplify]))
    self.assertEqual(verdict.outcome, analysis.HOLDS)
    self.assertEqual(verdict.numbers["both_censored"], 0)
    # Amplify censored, plain reaching it early: it learns no sooner (20 - 80 = -60), fails.
    plain = _result("plain", skill_curve=_skill_curve([20, 20, 40]), seeds=(0, 1, 2), steps=60)
    amplify = _result("amplify", skill_curve=_skill_curve([None] * 3), seeds=(0, 1, 2), steps=60)
    verdict = _criteria.evaluate(_criterion("4."), _evidence([plain, amplify]))
    self.assertEqual(verdict.outcome, analysis.FAILS)

  def test_amplification_is_judged_on_both_imputations_of_a_censored_run(self):
    seeds = tuple(range(10))
    plain = _result("plain", skill_curve=_skill_curve([60] * 10), seeds=seeds, steps=60)
    # Amplify reaches it at 20 in nine seeds, never in the tenth: counted one interval past the
    # end (80) the paired saving is 40 x 9 and -20, 34 [20.4, 47.6]: holds; counted as never,
    # the tenth seed's saving is -inf: fails. They disagree: inconclusive.
    amplify = _result("amplify", skill_curve=_skill_curve([20] * 9 + [None]), seeds=seeds,
                      steps=60)
    verdict = _criteria.evaluate(_criterion("4."), _evidence([plain, amplify]))
    self.assertEqual(verdict.outcome, analysis.INCONCLUSIVE)
    self.assertIn("imputations disagree", verdict.sentence)
    self.assertGreater(verdict.numbers["saved"]["low"], 1.0)  # "holds" as imputed
    # Amplify reaching it in every seed: nothing censored, holds.
    amplify = _result("amplify", skill_curve=_skill_curve([20] * 10), seeds=seeds, steps=60)
    self.assertEqual(_criteria.evaluate(_criterion("4."), _evidence([plain, amplify])).outcome,
                     analysis.HOLDS)
    # Plain censored where amplify saves little elsewhere: fails as imputed (80 - 60 = 20 in one
    # seed, -20 in nine), unbounded with "never": inconclusive.
    plain = _result("plain", skill_curve=_skill_curve([40] * 9 + [None]), seeds=seeds, steps=60)
    amplify = _result("amplify", skill_curve=_skill_curve([60] * 10), seeds=seeds, steps=60)
    verdict = _criteria.evaluate(_criterion("4."), _evidence([plain, amplify]))
    self.assertEqual(verdict.outcome, analysis.INCONCLUSIVE)
    self.assertIn("imputations disagree", verdict.sentence)

  def test_describe_refuses_needed_points_that_disagree(self):
    both = dataclasses.replace(_criterion("2."), needs=(("suppress", {"style_gain": 0.0}),
                                                         ("suppress", {"style_gain": -1.0})))
    with self.assertRaisesRegex(BadInputError, "style_gain=0.0 and style_gain=-1.0"):
      both.describe(_evidence([]))

  def test_span_share_check_against_the_null_level_and_the_oracle(self):
    # Logged span shares (L=2, S=3, G=4 sets + 2 null groups), constant over steps.
    def shares(style, null):
      per_seed = np.array([[s, 0.2, 0.25, 0.4, n, n] for s, n in zip(style, null)])
      return (np.array([10, 20]), np.stack([per_seed, per_seed]))

    seeds = (0, 1, 2)
    plain = _result("plain", seeds=seeds)
    oracle = _result("oracle", seeds=seeds)
    plain.attribution["span_share"] = shares([0.40, 0.42, 0.41], [0.30, 0.31, 0.29])
    oracle.attribution["span_share"] = shares([0.30, 0.31, 0.30], [0.30, 0.30, 0.31])
    verdict = _criteria.evaluate(_criterion("S."), _evidence([plain, oracle]))
    self.assertEqual(verdict.outcome, analysis.HOLDS)
    # Style minus null per seed: 0.10, 0.11, 0.12 -> mean 0.11.
    self.assertAlmostEqual(verdict.numbers["over_null"]["mean"], 0.11)
    self.assertAlmostEqual(verdict.numbers["over_oracle"]["mean"], (0.10 + 0.11 + 0.11) / 3)
    # The oracle as high as plain: no style attribution beyond the no-style reference.
    oracle.attribution["span_share"] = shares([0.41, 0.43, 0.42], [0.30, 0.30, 0.31])
    self.assertEqual(_criteria.evaluate(_criterion("S."), _evidence([plain, oracle])).outcome,
                     analysis.FAILS)

  def test_statements_take_their_numbers_from_bounds_and_config(self):
    for criterion in _criteria.PREREGISTERED + concept_attribution.POST_HOC + _criteria.DECLARED:
      # No number written into a name (past its label) or a statement: they come from data.
      self.assertIsNone(re.search(r"\d", criterion.name.split(" ", 1)[1]), criterion.name)
      words = re.sub(r"\{[^}]*\}", "", criterion.statement)  # the fields filled in from data
      self.assertIsNone(re.search(r"\d", words), criterion.statement)
    long_run = _criterion("5.")
    self.assertIn("3x longer", long_run.describe(_evidence([], long_factor=3)))
    self.assertIn("7x longer", long_run.describe(_evidence([], long_factor=7)))
    self.assertIn("accuracy 0.75", _criterion("4.").describe(_evidence([], threshold=0.75)))
    top = _criterion("1.")
    changed = dataclasses.replace(top, bounds=dataclasses.replace(top.bounds, by_step=20, top=4))
    self.assertIn("by step 20", changed.describe(_evidence([])))
    self.assertIn("top 4", changed.describe(_evidence([])))


  def test_post_hoc_margin_variant_judges_the_margin_gained_over_the_base(self):
    # The rate saturates (1.0 everywhere: the pre-registered criterion 2 fails), while the margin
    # gained over the base (step 0: -2) is 4 for plain and 1 for suppress: less than half.
    steps = np.array([0, 50, 100])

    def margins(final):
      start = np.full(5, -2.0)
      return (steps, np.stack([start, (start + final) / 2, final]))

    plain = _result("plain", style=[1.0] * 5, skill=[0.9] * 5)
    plain.final[_results.STYLE_MARGIN] = np.array([2.0, 2.1, 1.9, 2.0, 2.0])
    plain.curves[_results.STYLE_MARGIN] = margins(plain.final[_results.STYLE_MARGIN])
    suppress = _result("suppress", point={"style_gain": 0.0}, style=[1.0] * 5, skill=[0.9] * 5)
    suppress.final[_results.STYLE_MARGIN] = np.array([-1.0, -0.9, -1.1, -1.0, -1.0])
    suppress.curves[_results.STYLE_MARGIN] = margins(suppress.final[_results.STYLE_MARGIN])
    evidence = _evidence([plain, suppress])
    self.assertEqual(_criteria.evaluate(_criterion("2."), evidence).outcome, analysis.FAILS)
    on_margin = next(c for c in concept_attribution.POST_HOC if c.name.startswith("2m."))
    self.assertEqual(on_margin.bounds, _criterion("2.").bounds)  # the pre-registered bounds
    self.assertTrue(on_margin.post_hoc)
    verdict = _criteria.evaluate(on_margin, evidence)
    self.assertEqual(verdict.outcome, analysis.HOLDS)
    # suppress gained 1.0, plain 4.0: 1.0 - 0.5 x 4.0 = -1.0 per seed.
    self.assertAlmostEqual(verdict.numbers["style_minus_bound"]["mean"], -1.0)
    np.testing.assert_allclose(_criteria.acquired_style(plain, _results.STYLE_MARGIN),
                               [4.0, 4.1, 3.9, 4.0, 4.0])
    np.testing.assert_array_equal(_criteria.acquired_style(plain, _results.STYLE_RATE), [1.0] * 5)
    self.assertEqual([c.name.split(".")[0] for c in concept_attribution.POST_HOC],
                     ["2m", "3m", "5m"])


class JobsTest(absltest.TestCase):

  def test_every_arm_point_is_one_distinct_point_of_its_job(self):
    config = experiment_config.get_config("")
    for job in concept_attribution.JOB_REGISTRY:
      grid = _arms.job_grid(job, config)
      keys = [tuple(sorted(point.items())) for point in grid]
      self.assertLen(set(keys), len(keys), job)
      runs = [{"seed": seed, **point} for point in grid for seed in (0, 1)]
      claimed = []
      for arm in _arms.job_arms(job):
        points = _arms.runs_of(runs, arm, config)
        self.assertEqual([point for point, _ in points],
                         concept_attribution.ARM_REGISTRY[arm].grid(config))
        for _, indices in points:
          self.assertLen(indices, 2, (job, arm))
          claimed += indices
      self.assertEqual(sorted(claimed), list(range(len(runs))), job)
    # The update-space arms and their controls differ only in which features and which gains:
    # one job, one program.
    self.assertEqual({concept_attribution.ARM_REGISTRY[arm].job for arm in (
        "plain", "suppress", "amplify", "suppress_amplify", "random_features",
        "activation_features")}, {"gains"})
    self.assertEqual(concept_attribution.ARM_REGISTRY["suppress_live"].job,
                     concept_attribution.ARM_REGISTRY["plain_live"].job)

  def test_new_fields_are_validated_naming_field_and_value(self):
    for field, value, message in (
        ("attribution_log_every", 11, "config.attribution_log_every=11 exceeds config.steps=10"),
        ("attribution_log_every", 0, "attribution_log_every"),
        ("coverage", "everywhere", "config.coverage='everywhere'"),
        ("null_groups", 0, "null_groups"),
        ("null_groups", 2.5, "config.null_groups=2.5"),
        ("skill_threshold", 1.5, "config.skill_threshold=1.5")):
      config = experiment_config.get_config("smoke").to_dict()
      config[field] = value
      with self.assertRaisesRegex(ConfigError, re.escape(message)):
        concept_attribution.validate(ml_collections.ConfigDict(config))

  def test_gpu_preset_builds_and_validates_without_training(self):
    config = experiment_config.get_config("gpu")
    self.assertEqual(config.sae.d_sae, 16_384)
    self.assertEqual(concept_attribution.validate(config), list(concept_attribution.ARMS))
    default = experiment_config.get_config("")
    self.assertGreater(config.model.d_model, default.model.d_model)
    self.assertGreater(config.world.num_words, default.world.num_words)
    # The site is one of the model the preset builds (checked without initialising it).
    world = _setting.make_world(config)
    model = _setting.make_model(config, world)
    model.check_sites([config.site], what="config.site")
    config.unlock()
    config.group_size = config.sae.d_sae  # three groups cannot fit
    with self.assertRaisesRegex(ConfigError, "config.group_size"):
      concept_attribution.validate(config)


if __name__ == "__main__":
  absltest.main()
