"""Tests for landscape.transforms against float64 NumPy references."""

import functools
from typing import NamedTuple

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from landscape import transforms
from landscape.directions import BasisError
from landscape.directions import make_basis
from landscape.sites import ParamLink

WIDTH = 8    # the "resid" site
HIDDEN = 16  # the "hidden" site

# One leaf reads resid and writes hidden (w_in), one the reverse (w_out); a stacked leaf is touched
# only at slice 1; norm/scale is touched by nothing.
LINKS = {
    "resid": (
        ParamLink(("embed", "table"), 1, "writes"),
        ParamLink(("mlp", "w_in"), 0, "reads"),
        ParamLink(("mlp", "w_out"), 1, "writes"),
        ParamLink(("mlp", "b_out"), 0, "writes"),
        ParamLink(("blocks", "w"), 1, "writes", 1),
        ParamLink(("head", "w"), 0, "reads"),
    ),
    "hidden": (
        ParamLink(("mlp", "w_in"), 1, "writes"),
        ParamLink(("mlp", "w_out"), 0, "reads"),
    ),
}


def _params(seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  shapes = {
      "embed": {"table": (16, WIDTH)},
      "mlp": {"w_in": (WIDTH, HIDDEN), "w_out": (HIDDEN, WIDTH), "b_out": (WIDTH,)},
      "blocks": {"w": (3, WIDTH, WIDTH)},
      "head": {"w": (WIDTH, 4)},
      "norm": {"scale": (WIDTH,)},
  }
  return jax.tree.map(lambda shape: jnp.asarray(rng.normal(size=shape), dtype), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def _bases(seed=0, num_resid=3, num_hidden=2):
  rng = np.random.default_rng(100 + seed)
  return {
      "resid": make_basis(rng.normal(size=(num_resid, WIDTH)), site="resid",
                          labels=[f"concept{i}" for i in range(num_resid)]),
      "hidden": make_basis(rng.normal(size=(num_hidden, HIDDEN)), site="hidden"),
  }


def _flat(tree):
  return {tuple(k.key for k in path): np.asarray(leaf, np.float64)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _operator(basis_KxD, gains, complement):
  """complement * I + Q^T diag(g - complement) Q, float64."""
  q = np.asarray(basis_KxD, np.float64)
  g = np.broadcast_to(np.asarray(gains, np.float64), (q.shape[0],))
  return complement * np.eye(q.shape[1]) + q.T @ np.diag(g - complement) @ q


def _reference_sites(updates, bases, gains, complement, links=LINKS, roles=("writes", "reads")):
  out = _flat(updates)
  for site in sorted(bases):
    vectors = bases[site].vectors if hasattr(bases[site], "vectors") else bases[site]
    gain = gains[site] if isinstance(gains, dict) else gains
    operator = _operator(vectors, gain, complement)
    for link in links[site]:
      if link.role not in roles or link.path not in out:
        continue
      leaf = out[link.path]
      piece = leaf if link.index is None else leaf[link.index]
      new = np.moveaxis(np.moveaxis(piece, link.axis, -1) @ operator, -1, link.axis)
      if link.index is None:
        out[link.path] = new
      else:
        leaf[link.index] = new
  return out


def _component(piece, basis_KxD, axis):
  """Coefficients of every vector of ``piece`` along ``axis`` on the rows of the basis, float64."""
  return np.moveaxis(np.asarray(piece, np.float64), axis, -1) @ np.asarray(basis_KxD, np.float64).T


def _assert_flat_close(actual_tree, expected_flat, atol=2e-5):
  actual = _flat(actual_tree)
  assert set(actual) == set(expected_flat), (set(actual), set(expected_flat))
  for path in expected_flat:
    np.testing.assert_allclose(actual[path], expected_flat[path], atol=atol, rtol=1e-5,
                               err_msg=str(path))


def _run(tx, updates, params=None, steps=1, **extra_args):
  params = updates if params is None else params
  state = tx.init(params)
  update = jax.jit(tx.update)
  for _ in range(steps):
    out, state = update(updates, state, params, **extra_args)
  return out, state


def _param_space(seed=0):
  """Directions for two leaves (None elsewhere): K=2 for mlp/w_in, K=3 for head/w."""
  rng = np.random.default_rng(200 + seed)

  def orthonormal(k, shape):
    q, _ = np.linalg.qr(rng.normal(size=(int(np.prod(shape)), k)))
    return jnp.asarray(q.T.reshape((k,) + shape), jnp.float32)

  directions = jax.tree.map(lambda _: None, _params())
  directions["mlp"]["w_in"] = orthonormal(2, (WIDTH, HIDDEN))
  directions["head"]["w"] = orthonormal(3, (WIDTH, 4))
  return directions


def _reference_params(updates, directions, gains, complement):
  out = _flat(updates)
  flat_directions = {tuple(k.key for k in path): np.asarray(d, np.float64)
                     for path, d in jax.tree_util.tree_flatten_with_path(directions)[0]}
  for path, vectors in flat_directions.items():
    gain = gains[path] if isinstance(gains, dict) else gains
    operator = _operator(vectors.reshape(vectors.shape[0], -1), gain, complement)
    out[path] = (out[path].reshape(-1) @ operator).reshape(out[path].shape)
  return out, flat_directions


_KINDS = dict(
    out=(transforms.project_out, 0.0, 1.0),
    onto=(transforms.project_onto, 1.0, 0.0),
    scale=(lambda d: transforms.scale_along(d, jnp.asarray([2.0, -0.5, 0.0])), None, 1.0),
)


class ProjectionTest(parameterized.TestCase):

  @parameterized.parameters("out", "onto")
  def test_param_space(self, kind):
    factory, gain, complement = _KINDS[kind]
    grads, directions = _params(1), _param_space()
    out, _ = _run(factory(directions), grads)
    expected, flat_directions = _reference_params(grads, directions, gain, complement)
    _assert_flat_close(out, expected)
    flat_out = _flat(out)
    for path, vectors in flat_directions.items():
      coefficients = vectors.reshape(vectors.shape[0], -1) @ flat_out[path].reshape(-1)
      if kind == "out":
        np.testing.assert_allclose(coefficients, 0.0, atol=1e-5)
      else:  # the result equals its own projection: it lies in the span
        np.testing.assert_allclose(coefficients @ vectors.reshape(vectors.shape[0], -1),
                                   flat_out[path].reshape(-1), atol=1e-5)
    # Leaves with None directions pass through bitwise.
    np.testing.assert_array_equal(out["mlp"]["w_out"], grads["mlp"]["w_out"])

  def test_param_space_scale_per_leaf_gains(self):
    grads, directions = _params(2), _param_space()
    gains = {"mlp/w_in": jnp.asarray([3.0, 0.5]), "head/w": 0.0}
    out, _ = _run(transforms.scale_along(directions, gains), grads)
    expected, flat_directions = _reference_params(
        grads, directions, {("mlp", "w_in"): np.array([3.0, 0.5]), ("head", "w"): 0.0}, 1.0)
    _assert_flat_close(out, expected)
    # The same gains as a pytree mirroring the directions.
    tree_gains = jax.tree.map(lambda _: None, directions, is_leaf=lambda x: x is None)
    tree_gains["mlp"]["w_in"], tree_gains["head"]["w"] = jnp.asarray([3.0, 0.5]), 0.0
    out_tree, _ = _run(transforms.scale_along(directions, tree_gains), grads)
    chex.assert_trees_all_close(out_tree, out)
    vectors = flat_directions[("mlp", "w_in")].reshape(2, -1)
    before = vectors @ _flat(grads)[("mlp", "w_in")].reshape(-1)
    after = vectors @ _flat(out)[("mlp", "w_in")].reshape(-1)
    np.testing.assert_allclose(after, before * np.array([3.0, 0.5]), rtol=1e-5)

  @parameterized.product(kind=["out", "onto", "scale"], roles=[("writes",), ("reads",),
                                                               ("writes", "reads")])
  def test_sites(self, kind, roles):
    factory, gain, complement = _KINDS[kind]
    grads, bases = _params(3), _bases(num_resid=3, num_hidden=3)
    if kind == "scale":
      gain = np.array([2.0, -0.5, 0.0])
    directions = transforms.site_directions(bases, LINKS, params=grads, roles=roles)
    out, state = _run(factory(directions), grads)
    self.assertIsInstance(state, optax.EmptyState)
    _assert_flat_close(out, _reference_sites(grads, bases, gain, complement, roles=roles))
    flat_in, flat_out = _flat(grads), _flat(out)
    for site, links in LINKS.items():
      vectors = np.asarray(bases[site].vectors, np.float64)
      for link in links:
        if link.role not in roles:
          continue
        piece_in, piece_out = flat_in[link.path], flat_out[link.path]
        if link.index is not None:
          piece_in, piece_out = piece_in[link.index], piece_out[link.index]
        after = _component(piece_out, vectors, link.axis)
        before = _component(piece_in, vectors, link.axis)
        if kind == "out":  # orthogonal to every direction along every linked axis
          np.testing.assert_allclose(after, 0.0, atol=1e-5, err_msg=str(link))
        elif kind == "onto":  # lies in the span along every linked axis
          moved = np.moveaxis(piece_out, link.axis, -1)
          np.testing.assert_allclose(after @ vectors, moved, atol=1e-5, err_msg=str(link))
        elif not (link.path == ("mlp", "w_in") or link.path == ("mlp", "w_out")) or len(roles) == 1:
          # Exact gain per direction where one link touches the leaf.
          np.testing.assert_allclose(after, before * gain, atol=1e-5, err_msg=str(link))
    # Untouched leaves and the other slices of the stacked leaf pass through bitwise.
    np.testing.assert_array_equal(out["norm"]["scale"], grads["norm"]["scale"])
    np.testing.assert_array_equal(out["blocks"]["w"][0], grads["blocks"]["w"][0])
    np.testing.assert_array_equal(out["blocks"]["w"][2], grads["blocks"]["w"][2])
    if "writes" in roles:
      self.assertFalse(np.allclose(out["blocks"]["w"][1], grads["blocks"]["w"][1]))

  def test_scale_along_gain_forms_and_complement(self):
    grads, bases = _params(4), _bases()
    directions = transforms.site_directions(bases, LINKS)
    per_site = {"resid": jnp.asarray([0.5, 2.0, 1.5]), "hidden": 3.0}
    out, _ = _run(transforms.scale_along(directions, per_site), grads)
    _assert_flat_close(out, _reference_sites(
        grads, bases, {"resid": np.array([0.5, 2.0, 1.5]), "hidden": 3.0}, 1.0))
    # The complement is unchanged: (I - P) out == (I - P) grads along a single-link leaf.
    vectors = np.asarray(bases["resid"].vectors, np.float64)
    complement = np.eye(WIDTH) - vectors.T @ vectors
    np.testing.assert_allclose(_flat(out)[("head", "w")].T @ complement,
                               _flat(grads)[("head", "w")].T @ complement, atol=1e-5)
    # Gain 0 is project_out; gain 1 is the identity.
    zero, _ = _run(transforms.scale_along(directions, 0.0), grads)
    removed, _ = _run(transforms.project_out(directions), grads)
    chex.assert_trees_all_close(zero, removed, atol=1e-6)
    one, _ = _run(transforms.scale_along(directions, 1.0), grads)
    chex.assert_trees_all_close(one, grads, atol=1e-6)

  def test_bfloat16_update_projected_in_float32(self):
    grads = _params(5, dtype=jnp.bfloat16)
    bases = _bases()
    out, _ = _run(transforms.project_out(transforms.site_directions(bases, LINKS)), grads)
    chex.assert_trees_all_equal_dtypes(out, grads)
    # Computed in float32 and rounded to bf16 once (also on leaves touched by two sites): the
    # float64 reference rounded to bf16, up to rare one-ulp ties. Computing in bf16 misses ~40%.
    expected = _reference_sites(grads, bases, 0.0, 1.0)
    exact = total = 0
    for path, actual in _flat(out).items():
      rounded = np.asarray(jnp.asarray(expected[path], jnp.float32).astype(jnp.bfloat16),
                           np.float64)
      np.testing.assert_allclose(actual, rounded, rtol=2.0 ** -7, atol=1e-6, err_msg=str(path))
      exact += int(np.sum(actual == rounded))
      total += actual.size
    self.assertGreaterEqual(exact / total, 0.98)
    vectors = np.asarray(bases["resid"].vectors, np.float64)
    head_out = _flat(out)[("head", "w")]
    residue = np.linalg.norm(vectors @ head_out) / np.linalg.norm(_flat(grads)[("head", "w")])
    self.assertLess(residue, 2.0 ** -7)

  def test_same_axis_links_apply_in_sorted_site_order(self):
    # Two sites on the same axis of one leaf, spans neither orthogonal nor nested: the
    # projections do not commute, and "a" goes before "b" whatever the mapping order.
    rng = np.random.default_rng(23)
    bases = {site: make_basis(rng.normal(size=(2, WIDTH)), site=site) for site in ("b", "a")}
    links = {"b": (ParamLink(("head", "w"), 0, "reads"),),
             "a": (ParamLink(("head", "w"), 0, "reads"),)}
    grads = _params(24)
    out, _ = _run(transforms.project_out(transforms.site_directions(bases, links)), grads)
    expected = _reference_sites(grads, bases, 0.0, 1.0, links=links)
    _assert_flat_close(out, expected)
    head = _flat(out)[("head", "w")]
    np.testing.assert_allclose(_component(head, bases["b"].vectors, 0), 0.0, atol=1e-5)
    self.assertGreater(np.abs(_component(head, bases["a"].vectors, 0)).max(), 1e-2)


class AttributeTest(parameterized.TestCase):

  def test_site_metrics_pass_through_and_reconstruction(self):
    grads, bases = _params(6), _bases()
    directions = transforms.site_directions(bases, LINKS)
    tx = transforms.attribute(directions)
    state = tx.init(grads)
    chex.assert_trees_all_equal(state.metrics["resid/magnitude"], jnp.zeros(3))
    out, state = jax.jit(tx.update)(grads, state)
    chex.assert_trees_all_equal(out, grads)  # bitwise
    flat = _flat(grads)
    for site, basis in bases.items():
      vectors = np.asarray(basis.vectors, np.float64)
      squared = np.zeros(vectors.shape[0])
      norm_squared = 0.0
      for link in LINKS[site]:
        piece = flat[link.path] if link.index is None else flat[link.path][link.index]
        squared += np.sum(_component(piece, vectors, link.axis).reshape(-1, len(vectors)) ** 2, 0)
        norm_squared += np.sum(piece ** 2)
      metrics = state.metrics
      np.testing.assert_allclose(metrics[f"{site}/magnitude"], np.sqrt(squared), rtol=1e-5)
      np.testing.assert_allclose(metrics[f"{site}/share"], squared / norm_squared, rtol=1e-5)
      np.testing.assert_allclose(metrics[f"{site}/total_share"], squared.sum() / norm_squared,
                                 rtol=1e-5)
      np.testing.assert_allclose(metrics[f"{site}/norm"], np.sqrt(norm_squared), rtol=1e-5)

    # The coefficients reconstruct each linked slice's component in the span.
    decomposition = transforms.decompose(directions, grads)
    self.assertEqual([entry[0] for site in sorted(bases) for entry in decomposition[site]],
                     transforms.touched_parameters(LINKS))
    for site, entries in decomposition.items():
      vectors = np.asarray(bases[site].vectors, np.float64)
      for touched, coefficients in entries:
        piece = flat[touched.path] if touched.index is None else flat[touched.path][touched.index]
        moved = np.moveaxis(piece, touched.axis, -1)
        np.testing.assert_allclose(np.asarray(coefficients, np.float64) @ vectors,
                                   moved @ vectors.T @ vectors, atol=1e-5, err_msg=str(touched))

    labeled = transforms.label_metrics(state.metrics, bases)
    np.testing.assert_allclose(labeled["resid/share/concept1"], state.metrics["resid/share"][1])
    np.testing.assert_allclose(labeled["hidden/magnitude/1"], state.metrics["hidden/magnitude"][1])
    self.assertNotIn("resid/share", labeled)
    self.assertIn("resid/total_share", labeled)

  def test_param_space_metrics(self):
    grads, directions = _params(7), _param_space()
    _, state = _run(transforms.attribute(directions), grads)
    flat = _flat(grads)
    for path, vectors in [(("mlp", "w_in"), directions["mlp"]["w_in"]),
                          (("head", "w"), directions["head"]["w"])]:
      vectors = np.asarray(vectors, np.float64).reshape(vectors.shape[0], -1)
      coefficients = vectors @ flat[path].reshape(-1)
      name = "/".join(path)
      np.testing.assert_allclose(state.metrics[f"{name}/magnitude"], np.abs(coefficients),
                                 rtol=1e-5)
      np.testing.assert_allclose(state.metrics[f"{name}/share"],
                                 coefficients ** 2 / np.sum(flat[path] ** 2), rtol=1e-5)
      np.testing.assert_allclose(transforms.decompose(directions, grads)[name] @ vectors,
                                 coefficients @ vectors, atol=1e-5)

  @parameterized.parameters(6, 40)  # N <= D (direct) and N > D (through the D x D Gram)
  def test_dictionary_metrics(self, num_rows):
    grads = _params(8)
    rng = np.random.default_rng(9)
    dictionary = rng.normal(size=(num_rows, WIDTH))
    selected = np.array([0, 2, 3])
    directions = transforms.dictionary_directions({"resid": dictionary}, {"resid": selected},
                                                  LINKS)
    out, state = _run(transforms.attribute(directions), grads)
    chex.assert_trees_all_equal(out, grads)
    flat = _flat(grads)
    pieces = [(flat[link.path] if link.index is None else flat[link.path][link.index], link.axis)
              for link in LINKS["resid"]]
    squared = sum(np.sum(_component(p, dictionary, a).reshape(-1, num_rows) ** 2, 0)
                  for p, a in pieces)
    norm_squared = sum(np.sum(p ** 2) for p, _ in pieces)
    span, _ = np.linalg.qr(dictionary[selected].T)
    in_span = sum(np.sum(_component(p, span.T, a) ** 2) for p, a in pieces)
    metrics = state.metrics
    self.assertEqual(metrics["resid/magnitude"].shape, (num_rows,))
    np.testing.assert_allclose(metrics["resid/magnitude"], np.sqrt(squared), rtol=1e-4)
    np.testing.assert_allclose(metrics["resid/share"],
                               squared / norm_squared / np.sum(dictionary ** 2, 1), rtol=1e-4)
    np.testing.assert_allclose(metrics["resid/total_share"], in_span / norm_squared, rtol=1e-4)

  def test_metrics_found_by_the_loop_convention(self):
    grads, bases = _params(10), _bases()
    directions = transforms.site_directions(bases, LINKS)
    tx = optax.chain(transforms.attribute(directions), transforms.project_out(directions),
                     optax.sgd(0.1))
    _, state = _run(tx, grads)
    found = optax.tree_utils.tree_get_all_with_path(state, "metrics")
    self.assertLen(found, 1)
    metrics = found[0][1]
    self.assertEqual(metrics["resid/magnitude"].shape, (3,))
    self.assertGreater(float(metrics["resid/total_share"]), 0.0)


class CompositionTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.bases = _bases()
    self.directions = transforms.site_directions(self.bases, LINKS)

  def test_chain_with_sgd(self):
    grads = _params(11)
    tx = optax.chain(transforms.project_out(self.directions), optax.sgd(0.5))
    out, _ = _run(tx, grads)
    expected = {p: -0.5 * v for p, v in _reference_sites(grads, self.bases, 0.0, 1.0).items()}
    _assert_flat_close(out, expected)

  def test_masked(self):
    grads = _params(12)
    mask = jax.tree.map(lambda _: True, grads)
    mask["mlp"] = False  # the whole subtree becomes one MaskedNode
    out, _ = _run(optax.masked(transforms.project_out(self.directions), mask), grads)
    links = {site: tuple(link for link in site_links if link.path[0] != "mlp")
             for site, site_links in LINKS.items()}
    links["hidden"] = ()
    expected = _reference_sites(grads, self.bases, 0.0, 1.0, links=links)
    _assert_flat_close(out, expected)
    chex.assert_trees_all_equal(out["mlp"], grads["mlp"])

  def test_partition(self):
    grads = _params(13)
    labels = jax.tree.map(lambda _: "constrained", grads)
    labels["head"]["w"] = "frozen"
    tx = optax.partition({"constrained": transforms.project_onto(self.directions),
                          "frozen": optax.set_to_zero()}, labels)
    out, _ = _run(tx, grads)
    links = {site: tuple(link for link in site_links if link.path != ("head", "w"))
             for site, site_links in LINKS.items()}
    expected = _reference_sites(grads, self.bases, 1.0, 0.0, links=links)
    expected[("head", "w")] = np.zeros((WIDTH, 4))
    _assert_flat_close(out, expected)

  def test_inject_hyperparams_gain(self):
    grads = _params(14)
    tx = optax.inject_hyperparams(transforms.scale_along)(directions=self.directions, gains=0.5)
    state = tx.init(grads)
    update = jax.jit(tx.update)
    out, state = update(grads, state)
    _assert_flat_close(out, _reference_sites(grads, self.bases, 0.5, 1.0))
    state.hyperparams["gains"] = jnp.asarray(3.0)
    out, state = update(grads, state)
    _assert_flat_close(out, _reference_sites(grads, self.bases, 3.0, 1.0))

  def test_multi_steps(self):
    first, second = _params(15), _params(16)
    inner = optax.chain(transforms.attribute(self.directions),
                        transforms.project_out(self.directions))
    tx = optax.MultiSteps(inner, every_k_schedule=2)
    state = tx.init(first)
    update = jax.jit(tx.update)
    out, state = update(first, state)
    chex.assert_trees_all_equal(out, jax.tree.map(jnp.zeros_like, first))
    metrics = optax.tree_utils.tree_get_all_with_path(state, "metrics")[0][1]
    chex.assert_trees_all_equal(metrics["resid/norm"], jnp.zeros(()))  # not emitted yet
    out, state = update(second, state)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, first, second)
    _assert_flat_close(out, _reference_sites(mean, self.bases, 0.0, 1.0))
    _, expected_state = _run(transforms.attribute(self.directions), mean)
    metrics = optax.tree_utils.tree_get_all_with_path(state, "metrics")[0][1]
    chex.assert_trees_all_close(metrics, expected_state.metrics, rtol=1e-5)

  def test_apply_if_finite(self):
    grads = _params(17)
    tx = optax.apply_if_finite(transforms.project_out(self.directions), max_consecutive_errors=3)
    state = tx.init(grads)
    update = jax.jit(tx.update)
    bad = jax.tree.map(lambda x: x, grads)
    bad["head"]["w"] = bad["head"]["w"].at[0, 0].set(jnp.nan)
    out, state = update(bad, state)
    chex.assert_trees_all_equal(out, jax.tree.map(jnp.zeros_like, grads))
    self.assertEqual(int(state.notfinite_count), 1)
    out, state = update(grads, state)
    _assert_flat_close(out, _reference_sites(grads, self.bases, 0.0, 1.0))
    self.assertEqual(int(state.notfinite_count), 0)


def _mesh():
  return jax.sharding.Mesh(np.array(jax.devices()[:8]), ("x",))


class ExecutionTest(parameterized.TestCase):

  def test_jit_equals_eager(self):
    grads, bases = _params(18), _bases()
    directions = transforms.site_directions(bases, LINKS)
    tx = optax.chain(transforms.attribute(directions), transforms.scale_along(directions, 0.25))
    state = tx.init(grads)
    eager = tx.update(grads, state)
    jitted = jax.jit(tx.update)(grads, state)
    chex.assert_trees_all_close(eager, jitted, atol=1e-6)

  def test_sharded_equals_single_device(self):
    self.assertGreaterEqual(jax.device_count(), 8)
    mesh = _mesh()
    grads, bases = _params(19), _bases()
    directions = transforms.site_directions(bases, LINKS, params=grads)
    tx = optax.chain(transforms.attribute(directions), transforms.project_out(directions))
    specs = {
        "embed": {"table": jax.sharding.PartitionSpec("x", None)},
        "mlp": {"w_in": jax.sharding.PartitionSpec("x", None),
                "w_out": jax.sharding.PartitionSpec(None, "x"),
                "b_out": jax.sharding.PartitionSpec("x")},
        "blocks": {"w": jax.sharding.PartitionSpec(None, "x", None)},
        "head": {"w": jax.sharding.PartitionSpec("x", None)},
        "norm": {"scale": jax.sharding.PartitionSpec("x")},
    }
    shardings = jax.tree.map(lambda spec: jax.sharding.NamedSharding(mesh, spec), specs,
                             is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    sharded_grads = jax.device_put(grads, shardings)
    self.assertLen(sharded_grads["mlp"]["w_in"].sharding.device_set, 8)
    single = jax.jit(tx.update)(grads, tx.init(grads))
    sharded = jax.jit(tx.update)(sharded_grads, tx.init(sharded_grads))
    chex.assert_trees_all_close(jax.device_get(sharded), jax.device_get(single), atol=1e-6,
                                rtol=1e-6)
    _assert_flat_close(sharded[0], _reference_sites(grads, bases, 0.0, 1.0))

  def test_extra_args_equal_fixed_and_are_held(self):
    grads = _params(20)
    first, second = _bases(1), _bases(2)
    held = transforms.site_directions(first, LINKS, extra_arg="bases")
    tx = transforms.project_out(held)
    state = tx.init(grads)
    self.assertIsInstance(state, transforms.HeldDirectionsState)
    update = jax.jit(tx.update)
    # Without the arg: the bases given at construction.
    out, state = update(grads, state)
    fixed, _ = _run(transforms.project_out(transforms.site_directions(first, LINKS)), grads)
    chex.assert_trees_all_close(out, fixed, atol=1e-6)
    # With it: the new bases (Basis values or arrays), equal to building them in ...
    out, state = update(grads, state, bases=second)
    fixed, _ = _run(transforms.project_out(transforms.site_directions(second, LINKS)), grads)
    chex.assert_trees_all_close(out, fixed, atol=1e-6)
    # ... and held for the next step without the arg.
    out, state = update(grads, state)
    chex.assert_trees_all_close(out, fixed, atol=1e-6)
    # A subset of sites may be passed.
    mixed = {"resid": first["resid"].vectors}
    out, state = update(grads, state, bases=mixed)
    _assert_flat_close(out, _reference_sites(
        grads, {"resid": first["resid"], "hidden": second["hidden"]}, 0.0, 1.0))

  def test_param_space_extra_args(self):
    grads = _params(21)
    first, second = _param_space(0), _param_space(1)
    tx = transforms.project_out(transforms.param_directions(first, extra_arg="directions"))
    out, _ = _run(tx, grads, directions=second)
    expected, _ = _reference_params(grads, second, 0.0, 1.0)
    _assert_flat_close(out, expected)

  def test_vmap_over_seeds_equals_loop(self):
    num_seeds = 3
    grads = [_params(30 + s) for s in range(num_seeds)]
    bases = [_bases(40 + s) for s in range(num_seeds)]
    directions = transforms.site_directions(bases[0], LINKS, extra_arg="bases")
    tx = optax.chain(transforms.attribute(directions), transforms.project_out(directions),
                     optax.adam(1e-2))
    stack = lambda trees: jax.tree.map(lambda *x: jnp.stack(x), *trees)
    stacked_grads, stacked_bases = stack(grads), stack(bases)
    state = jax.vmap(tx.init)(stacked_grads)
    step = jax.jit(jax.vmap(tx.update))
    for _ in range(2):
      batched, state = step(stacked_grads, state, stacked_grads, bases=stacked_bases)
    for seed in range(num_seeds):
      seed_state = tx.init(grads[seed])
      for _ in range(2):
        single, seed_state = jax.jit(tx.update)(grads[seed], seed_state, grads[seed],
                                                bases=bases[seed])
      chex.assert_trees_all_close(jax.tree.map(lambda x: x[seed], batched), single, atol=1e-6)
      chex.assert_trees_all_close(jax.tree.map(lambda x: x[seed], state), seed_state, atol=1e-6)


def _dictionary(seed=0, num_rows=24):
  return np.random.default_rng(seed).normal(size=(num_rows, WIDTH))


class DictionaryTest(parameterized.TestCase):

  @parameterized.parameters("indices", "mask")
  def test_equals_explicit_basis(self, form):
    grads, dictionary = _params(50), _dictionary(1)
    chosen = np.array([3, 7, 11])
    selected = chosen if form == "indices" else np.isin(np.arange(len(dictionary)), chosen)
    directions = transforms.dictionary_directions({"resid": dictionary}, {"resid": selected},
                                                  LINKS, params=grads)
    explicit = transforms.site_directions(
        {"resid": make_basis(dictionary[chosen], site="resid")}, LINKS)
    for factory in (transforms.project_out, transforms.project_onto,
                    lambda d: transforms.scale_along(d, 2.5)):
      out, state = _run(factory(directions), grads)
      expected, _ = _run(factory(explicit), grads)
      chex.assert_trees_all_close(out, expected, atol=2e-5)
    self.assertIsInstance(state, optax.EmptyState)
    rank = 3 if form == "indices" else WIDTH
    self.assertEqual(directions.bases["resid"].shape, (rank, WIDTH))

  def test_overcomplete_selection_spans_a_subspace(self):
    grads = _params(51)
    rng = np.random.default_rng(2)
    subspace = np.linalg.qr(rng.normal(size=(WIDTH, 5)))[0].T  # (5, D)
    dictionary = rng.normal(size=(30, 5)) @ subspace           # 30 rows, rank 5
    selected = np.arange(12)                                    # S = 12 > D = 8, rank 5
    directions = transforms.dictionary_directions({"resid": dictionary}, {"resid": selected},
                                                  LINKS)
    out, _ = _run(transforms.project_out(directions), grads)
    expected = _reference_sites(grads, {"resid": subspace}, 0.0, 1.0,
                                links={"resid": LINKS["resid"]})
    _assert_flat_close(out, expected)

  def test_step_cost_does_not_depend_on_dictionary_size(self):
    grads = _params(53)
    num_rows = 4099  # a size no other array here has
    directions = transforms.dictionary_directions(
        {"resid": _dictionary(6, num_rows)}, {"resid": np.arange(0, 400, 100)}, LINKS)
    tx = transforms.project_out(directions)
    jaxpr = str(jax.make_jaxpr(tx.update)(grads, tx.init(grads)))
    self.assertNotIn(str(num_rows), jaxpr)
    self.assertIn("4,8]", jaxpr)  # the held (R, D) span basis, R = 4 selected rows

  def test_span_basis_traced_matches_construction(self):
    dictionary = _dictionary(3)
    selected = np.array([1, 5, 9, 2])
    traced = jax.jit(transforms.span_basis)(jnp.asarray(dictionary, jnp.float32), selected)
    reference = np.linalg.qr(dictionary[selected].T)[0]
    np.testing.assert_allclose(np.asarray(traced, np.float64).T @ np.asarray(traced, np.float64),
                               reference @ reference.T, atol=1e-5)


class _Run(NamedTuple):
  """What the training loop hands a refresher as ``run``: here only the refreshed values."""

  refreshed: dict


def _refresh(refresher, value, step, run):
  return refresher.update(value, params=None, step=step, key=None, run=run)


class SpanRefresherTest(parameterized.TestCase):
  """The dictionary's span re-estimated by a refresher of the loop, read as the extra arg."""

  def _directions(self, dictionary, selected):
    return transforms.dictionary_directions({"resid": dictionary}, {"resid": selected}, LINKS,
                                            extra_arg="span")

  def test_refresh_schedule(self):
    grads, dictionary = _params(52), _dictionary(4)
    every = 3
    selections = [np.array([i, i + 1]) for i in range(7)]
    directions = self._directions(dictionary, selections[0] + 10)
    source = lambda run: {
        "resid": transforms.DictionarySelection(selected=run.refreshed["chosen"])}
    refresher = transforms.span_refresher(directions, every=every, source=source)
    self.assertEqual(refresher.name, "span")
    tx = transforms.project_out(directions)
    state = tx.init(grads)
    value = refresher.init(jax.random.PRNGKey(0), grads)
    np.testing.assert_allclose(value["resid"], directions.bases["resid"])
    refresh = jax.jit(functools.partial(_refresh, refresher))
    update = jax.jit(tx.update)
    for step, selection in enumerate(selections):
      before = value
      value = refresh(value, jnp.asarray(step, jnp.int32),
                      _Run({"chosen": jnp.asarray(selection)}))
      if step % every:  # not due: the very value it had, whatever the source gives now
        chex.assert_trees_all_equal(value, before)
      else:
        self.assertFalse(np.allclose(value["resid"], before["resid"]))
      out, state = update(grads, state, span=value)
      in_use = selections[step - step % every]
      basis = make_basis(dictionary[in_use], site="resid")
      expected = _reference_sites(grads, {"resid": basis}, 0.0, 1.0,
                                  links={"resid": LINKS["resid"]})
      _assert_flat_close(out, expected)
    # Fixed arrays as the source: a new dictionary (same shape) from the next refresh on.
    other = _dictionary(5)
    refresher = transforms.span_refresher(directions, every=every,
                                          source={"resid": jnp.asarray(other, jnp.float32)})
    value = _refresh(refresher, refresher.init(None, grads), jnp.asarray(0, jnp.int32), None)
    out, _ = _run(tx, grads, span=value)
    expected = _reference_sites(grads, {"resid": make_basis(other[selections[0] + 10],
                                                            site="resid")},
                                0.0, 1.0, links={"resid": LINKS["resid"]})
    _assert_flat_close(out, expected)

  def test_vmap_over_runs_with_an_unbatched_step(self):
    num_runs = 2
    grads = [_params(60 + s) for s in range(num_runs)]
    dictionaries = [_dictionary(70 + s) for s in range(num_runs)]
    selected = np.array([0, 4, 8])
    directions = self._directions(dictionaries[0], selected)
    refresher = transforms.span_refresher(
        directions, every=2, source=lambda run: {"resid": run.refreshed["sae"]})
    tx = transforms.project_out(directions)
    runs = _Run({"sae": jnp.asarray(np.stack(dictionaries), jnp.float32)})
    refresh = jax.vmap(functools.partial(_refresh, refresher), in_axes=(0, None, 0))
    values = jax.vmap(refresher.init, in_axes=(None, 0))(None, jnp.arange(num_runs))
    step = jnp.asarray(0, jnp.int32)
    jaxpr = str(jax.make_jaxpr(refresh)(values, step, runs))
    self.assertIn("cond[", jaxpr)  # a branch, not a select that refreshes at every step
    values = jax.jit(refresh)(values, step, runs)
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *grads)
    out, _ = jax.jit(jax.vmap(tx.update))(stacked, jax.vmap(tx.init)(stacked), span=values)
    for run in range(num_runs):
      single, _ = _run(tx, grads[run], span={"resid": transforms.span_basis(
          jnp.asarray(dictionaries[run], jnp.float32), selected)})
      chex.assert_trees_all_close(jax.tree.map(lambda x: x[run], out), single, atol=2e-5)
    # Step 1 is not due: every run keeps its value although the source changed.
    changed = _Run({"sae": runs.refreshed["sae"][::-1]})
    kept = jax.jit(refresh)(values, jnp.asarray(1, jnp.int32), changed)
    chex.assert_trees_all_equal(kept, values)
    refreshed = jax.jit(refresh)(values, jnp.asarray(2, jnp.int32), changed)
    np.testing.assert_allclose(np.abs(refreshed["resid"][0]), np.abs(values["resid"][1]),
                               atol=1e-5)

  def test_errors(self):
    directions = self._directions(_dictionary(), np.array([0, 1]))
    refresher = transforms.span_refresher(
        directions, every=1,
        source={"resid": transforms.DictionarySelection(selected=jnp.arange(3))})
    value = refresher.init(None, None)
    with self.assertRaisesRegex(transforms.DirectionsError,
                                r"selection at site 'resid' has shape \(3,\)"):
      _refresh(refresher, value, jnp.asarray(0, jnp.int32), None)
    refresher = transforms.span_refresher(directions, every=1, source={"hidden": _dictionary()})
    with self.assertRaisesRegex(transforms.DirectionsError, r"site 'hidden'.*no dictionary"):
      _refresh(refresher, value, jnp.asarray(0, jnp.int32), None)
    with self.assertRaisesRegex(transforms.DirectionsError, r"every=0 must be >= 1"):
      transforms.span_refresher(directions, every=0)
    with self.assertRaisesRegex(transforms.DirectionsError, r"dictionary_directions"):
      transforms.span_refresher(transforms.site_directions(_bases(), LINKS, extra_arg="span"),
                                every=1)
    fixed = transforms.dictionary_directions({"resid": _dictionary()}, None, LINKS)
    with self.assertRaisesRegex(transforms.DirectionsError, r"give a name"):
      transforms.span_refresher(fixed, every=1)
    # The transform takes span bases of the held shape only.
    tx = transforms.project_out(directions)
    grads = _params()
    with self.assertRaisesRegex(transforms.DirectionsError,
                                r"'span': site 'resid' has shape \(3, 8\); expected \(2, 8\)"):
      tx.update(grads, tx.init(grads), span={"resid": jnp.eye(3, WIDTH)})


class ValidationTest(parameterized.TestCase):

  def test_touched_parameters(self):
    touched = transforms.touched_parameters(LINKS, ["resid"], roles=("reads",))
    self.assertEqual(touched, [("resid", ("mlp", "w_in"), "reads", 0, None),
                               ("resid", ("head", "w"), "reads", 0, None)])
    self.assertEqual(transforms.touched_parameters(LINKS)[0].site, "hidden")

  def test_basis_nan(self):
    vectors = np.eye(3, WIDTH)
    vectors[1, 2] = np.nan
    with self.assertRaisesRegex(BasisError, r"'resid'.*non-finite.*\(3, 8\)"):
      transforms.site_directions({"resid": vectors}, LINKS)

  def test_basis_not_orthonormal(self):
    vectors = np.eye(3, WIDTH)
    vectors[1, 0] = 0.5
    with self.assertRaisesRegex(BasisError, r"'resid'.*\(3, 8\) are not orthonormal"):
      transforms.site_directions({"resid": vectors}, LINKS)

  def test_basis_wrong_rank(self):
    with self.assertRaisesRegex(BasisError, r"'resid'.*\(K, D\).*\(8,\)"):
      transforms.site_directions({"resid": np.ones(WIDTH)}, LINKS)

  def test_basis_wrong_width(self):
    bases = {"resid": make_basis(np.eye(2, 6), site="resid")}
    with self.assertRaisesRegex(transforms.DirectionsError,
                                r"site 'resid', link 'embed/table'.*\(16, 8\).*size 8 on axis 1"
                                r".*width 6 \(shape \(2, 6\)\)"):
      transforms.site_directions(bases, LINKS, params=_params())
    # Without params at construction, the transform's init raises the same.
    tx = transforms.project_out(transforms.site_directions(bases, LINKS))
    with self.assertRaisesRegex(transforms.DirectionsError, r"'resid'.*width 6"):
      tx.init(_params())

  def test_site_without_links(self):
    bases = {"attn_out": make_basis(np.eye(2, WIDTH), site="attn_out")}
    with self.assertRaisesRegex(transforms.DirectionsError, r"site 'attn_out' has no parameter"):
      transforms.site_directions(bases, LINKS)

  def test_link_path_missing(self):
    links = {"resid": (ParamLink(("mlp", "w_gate"), 0, "reads"),)}
    with self.assertRaisesRegex(transforms.DirectionsError,
                                r"site 'resid'.*no parameter at path 'mlp/w_gate'"):
      transforms.site_directions(_bases(), dict(LINKS, **links), params=_params())

  def test_stack_index_out_of_range(self):
    links = {"resid": (ParamLink(("blocks", "w"), 1, "writes", 5),), "hidden": LINKS["hidden"]}
    with self.assertRaisesRegex(transforms.DirectionsError,
                                r"'blocks/w'.*index 5 out of range.*\(3, 8, 8\)"):
      transforms.site_directions(_bases(), links, params=_params())

  def test_extra_arg_wrong_shape_under_jit(self):
    grads = _params()
    tx = transforms.project_out(transforms.site_directions(_bases(), LINKS, extra_arg="bases"))
    state = tx.init(grads)
    with self.assertRaisesRegex(transforms.DirectionsError,
                                r"site 'resid' has shape \(2, 8\); expected \(3, 8\)"):
      jax.jit(tx.update)(grads, state, bases={"resid": jnp.eye(2, WIDTH)})

  def test_param_directions_errors(self):
    directions = _param_space()
    wrong = jax.tree.map(lambda x: x, directions, is_leaf=lambda x: x is None)
    wrong["head"]["w"] = jnp.zeros((2, 4, WIDTH))
    with self.assertRaisesRegex(BasisError, r"'head/w'.*\(2, 4, 8\) are not orthonormal"):
      transforms.param_directions(wrong)
    wrong["head"]["w"] = jnp.eye(2, 32).reshape(2, 4, WIDTH)
    with self.assertRaisesRegex(transforms.DirectionsError,
                                r"'head/w' have shape \(2, 4, 8\); expected \(K, \*\(8, 4\)\)"):
      transforms.param_directions(wrong, params=_params())
    wrong["head"]["w"] = jnp.full((2, WIDTH, 4), jnp.nan)
    with self.assertRaisesRegex(BasisError, r"'head/w'.*non-finite"):
      transforms.project_out(wrong)

  def test_gain_shapes(self):
    directions = transforms.site_directions(_bases(), LINKS)
    with self.assertRaisesRegex(transforms.DirectionsError, r"site 'hidden'.*gain of shape \(3,\)"):
      transforms.scale_along(directions, jnp.ones(3))
    with self.assertRaisesRegex(transforms.DirectionsError, r"missing \['hidden'\]"):
      transforms.scale_along(directions, {"resid": 1.0})
    dictionary = transforms.dictionary_directions({"resid": _dictionary()}, None, LINKS)
    with self.assertRaisesRegex(transforms.DirectionsError, r"one gain per site"):
      transforms.scale_along(dictionary, jnp.ones(24))

  def test_dictionary_errors(self):
    dictionary = _dictionary()
    dictionary[3, 1] = np.inf
    with self.assertRaisesRegex(BasisError, r"dictionary at site 'resid'.*non-finite.*\(24, 8\)"):
      transforms.dictionary_directions({"resid": dictionary}, None, LINKS)
    with self.assertRaisesRegex(BasisError, r"'resid'.*indices.*outside \[0, 24\)"):
      transforms.dictionary_directions({"resid": _dictionary()}, {"resid": np.array([0, 30])},
                                       LINKS)

  def test_site_bases_must_go_through_site_directions(self):
    with self.assertRaisesRegex(transforms.DirectionsError, r"site_directions"):
      transforms.project_out(_bases())


if __name__ == "__main__":
  absltest.main()


class MaskUpdatesTest(absltest.TestCase):

  def test_frozen_entries_are_exactly_zero_and_others_unchanged(self):
    updates = {"first": {"kernel": jnp.arange(12.0).reshape(4, 3) + 1}, "second": jnp.ones(5)}
    keep = {"first": {"kernel": np.array([[1], [0], [1], [0]], np.float32)}, "second": None}
    transform = transforms.mask_updates(keep)
    state = transform.init(updates)
    masked, _ = jax.jit(transform.update)(updates, state)
    kernel, original = np.asarray(masked["first"]["kernel"]), np.asarray(updates["first"]["kernel"])
    np.testing.assert_array_equal(kernel[[1, 3]], 0.0)
    np.testing.assert_array_equal(kernel[[0, 2]], original[[0, 2]])
    np.testing.assert_array_equal(masked["second"], updates["second"])

  def test_mask_that_does_not_broadcast_names_shapes(self):
    transform = transforms.mask_updates({"kernel": np.ones((2, 2))})
    with self.assertRaisesRegex(ValueError, r"mask of shape \(2, 2\).*\(4, 3\)"):
      transform.init({"kernel": jnp.ones((4, 3))})

  def test_a_prefix_leaf_covers_its_subtree(self):
    # Used to pass init and fail at the first update ("'dict' object has no attribute 'dtype'").
    rng = np.random.default_rng(0)
    updates = {"encoder": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
                           "bias": jnp.asarray(rng.normal(size=3), jnp.float32)},
               "decoder": {"kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                           "bias": jnp.asarray(rng.normal(size=4), jnp.float32)},
               "head": jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)}
    transform = transforms.mask_updates({"encoder": 0.0, "decoder": None,
                                         "head": np.array([[1.0], [0.0]], np.float32)})
    masked, _ = jax.jit(transform.update)(updates, transform.init(updates))
    for name in ("kernel", "bias"):
      np.testing.assert_array_equal(np.abs(masked["encoder"][name]), 0.0)
      chex.assert_trees_all_equal(masked["decoder"][name], updates["decoder"][name])
    chex.assert_trees_all_equal(masked["head"][0], updates["head"][0])
    np.testing.assert_array_equal(np.abs(masked["head"][1]), 0.0)

  def test_a_prefix_mask_that_does_not_broadcast_to_a_leaf_below_names_it(self):
    transform = transforms.mask_updates({"encoder": np.ones(3)})
    with self.assertRaisesRegex(ValueError, r"mask of shape \(3,\).*\(4, 2\)"):
      transform.init({"encoder": {"bias": jnp.ones(3), "kernel": jnp.ones((4, 2))}})

  def test_a_keep_tree_that_is_not_a_prefix_is_refused_at_init(self):
    transform = transforms.mask_updates({"encoder": {"weights": 0.0}})
    with self.assertRaisesRegex(ValueError, r"keep is not a prefix of the params"):
      transform.init({"encoder": {"kernel": jnp.ones((4, 2))}})


class ProjectionWithAdamTest(absltest.TestCase):
  """The invariant that matters for a block: the parameter change has no component along Q."""

  def _changes(self, optimizer, basis_KxD, steps=3):
    rng = np.random.default_rng(0)
    params = {"kernel": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)}
    state = optimizer.init(params)
    for _ in range(steps):
      grads = {"kernel": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)}
      updates, state = optimizer.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      yield np.asarray(updates["kernel"], np.float64) @ np.asarray(basis_KxD, np.float64).T

  def test_projection_after_adam_keeps_every_change_out_of_the_basis(self):
    basis = make_basis(np.random.default_rng(1).normal(size=(3, 8)), site="out")
    links = {"out": (ParamLink(("kernel",), axis=1, role="writes"),)}
    held = transforms.site_directions({"out": basis}, links)
    for along in self._changes(optax.chain(optax.adam(1e-2), transforms.project_out(held)),
                               basis.vectors):
      np.testing.assert_allclose(along, 0.0, atol=1e-7)
    leaked = max(np.abs(along).max() for along in self._changes(
        optax.chain(transforms.project_out(held), optax.adam(1e-2)), basis.vectors))
    self.assertGreater(leaked, 1e-4)  # before Adam, its per-coordinate scaling puts some back
