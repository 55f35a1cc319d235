"""`attribute` over a dictionary refreshed during training: reported along the current rows."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from landscape import transforms
from landscape.sites import ParamLink

WIDTH = 6
LINKS = {"resid": (ParamLink(("w_out",), 1, "writes"), ParamLink(("b_out",), 0, "writes"),
                   ParamLink(("stack",), 1, "writes", 1), ParamLink(("w_in",), 0, "reads"))}


def _params(seed):
  rng = np.random.default_rng(seed)
  shapes = {"w_out": (5, WIDTH), "b_out": (WIDTH,), "stack": (2, 3, WIDTH), "w_in": (WIDTH, 4),
            "other": (3,)}
  return {name: jnp.asarray(rng.normal(size=shape), jnp.float32) for name, shape in shapes.items()}


def _reference(updates, rows_NxD):
  """(magnitude (N,), share (N,), norm) in float64: every linked slice's vectors U stacked."""
  flat = {name: np.asarray(leaf, np.float64) for name, leaf in updates.items()}
  vectors = [np.moveaxis(flat["w_out"], 1, -1).reshape(-1, WIDTH), flat["b_out"][None],
             flat["stack"][1].reshape(-1, WIDTH), np.moveaxis(flat["w_in"], 0, -1)]
  u = np.concatenate(vectors, axis=0)
  rows = np.asarray(rows_NxD, np.float64)
  squared = np.sum(np.square(u @ rows.T), axis=0)
  norm_squared = np.sum(np.square(u))
  share = squared / (norm_squared * np.sum(np.square(rows), axis=1))
  return np.sqrt(squared), share, np.sqrt(norm_squared)


class LiveRowsTest(parameterized.TestCase):

  @parameterized.parameters(4, 20)  # N <= D (direct) and N > D (through the Gram matrix)
  def test_reports_along_the_rows_given_each_step(self, num_rows):
    rng = np.random.default_rng(num_rows)
    initial = rng.normal(size=(num_rows, WIDTH))
    directions = transforms.dictionary_directions({"resid": initial}, None, LINKS)
    tx = transforms.attribute(directions, rows_arg="rows")
    update = jax.jit(tx.update)
    state = tx.init(_params(0))
    for step in range(3):
      updates = _params(10 + step)
      current = rng.normal(size=(num_rows, WIDTH)) * rng.uniform(0.5, 2.0, size=(num_rows, 1))
      out, state = update(updates, state, None, rows={"resid": jnp.asarray(current, jnp.float32)})
      magnitude, share, norm = _reference(updates, current)
      # float32 HIGHEST matmuls over ~40 vectors of width 6: relative error ~1e-6.
      np.testing.assert_allclose(state.metrics["resid/magnitude"], magnitude, rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(state.metrics["resid/share"], share, rtol=1e-4, atol=1e-6)
      np.testing.assert_allclose(state.metrics["resid/norm"], norm, rtol=1e-5)
      for name in updates:
        np.testing.assert_array_equal(out[name], updates[name])

  def test_held_rows_are_used_until_new_ones_arrive(self):
    rng = np.random.default_rng(1)
    initial, later = rng.normal(size=(8, WIDTH)), rng.normal(size=(8, WIDTH))
    directions = transforms.dictionary_directions({"resid": initial}, None, LINKS)
    tx = transforms.attribute(directions, rows_arg="rows")
    state = tx.init(_params(0))
    updates = _params(3)
    _, state = tx.update(updates, state, rows={"resid": jnp.asarray(later, jnp.float32)})
    _, state = tx.update(updates, state)  # no rows this step: the held ones
    np.testing.assert_allclose(state.metrics["resid/magnitude"], _reference(updates, later)[0],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.rows["resid"], later.astype(np.float32))

  def test_without_rows_arg_the_construction_rows_stay(self):
    rng = np.random.default_rng(2)
    initial = rng.normal(size=(8, WIDTH))
    directions = transforms.dictionary_directions({"resid": initial}, None, LINKS)
    tx = transforms.attribute(directions)
    updates = _params(4)
    _, state = tx.update(updates, tx.init(updates), rows={"resid": jnp.zeros((8, WIDTH))})
    np.testing.assert_allclose(state.metrics["resid/magnitude"], _reference(updates, initial)[0],
                               rtol=1e-4, atol=1e-5)
    self.assertIsNone(state.rows)

  def test_in_a_chain_with_a_span_refresh(self):
    """Rows and span arrive together, as a live SAE and its span refresher give them."""
    rng = np.random.default_rng(3)
    initial, later = rng.normal(size=(10, WIDTH)), rng.normal(size=(10, WIDTH))
    chosen = np.array([1, 4])
    directions = transforms.dictionary_directions({"resid": initial}, {"resid": chosen}, LINKS,
                                                  extra_arg="span")
    tx = optax.chain(transforms.attribute(directions, rows_arg="rows"),
                     transforms.project_out(directions))
    updates = _params(5)
    span = transforms.span_basis(jnp.asarray(later, jnp.float32), chosen)
    _, state = jax.jit(tx.update)(updates, tx.init(updates), None, span={"resid": span},
                                  rows={"resid": jnp.asarray(later, jnp.float32)})
    np.testing.assert_allclose(state[0].metrics["resid/magnitude"], _reference(updates, later)[0],
                               rtol=1e-4, atol=1e-5)
    # total_share: the share of the squared norm in the span of the later chosen rows.
    _, share_in_span, _ = _reference(updates, np.linalg.qr(later[chosen].T)[0].T)
    np.testing.assert_allclose(state[0].metrics["resid/total_share"], share_in_span.sum(),
                               rtol=1e-4)

  def test_bad_input(self):
    rng = np.random.default_rng(4)
    directions = transforms.dictionary_directions({"resid": rng.normal(size=(8, WIDTH))}, None,
                                                  LINKS, extra_arg="span")
    tx = transforms.attribute(directions, rows_arg="rows")
    state = tx.init(_params(0))
    with self.assertRaisesRegex(transforms.DirectionsError, r"shape \(7, 6\).*\(8, 6\)"):
      tx.update(_params(1), state, rows={"resid": jnp.zeros((7, WIDTH))})
    with self.assertRaisesRegex(transforms.DirectionsError, "'hidden'"):
      tx.update(_params(1), state, rows={"hidden": jnp.zeros((8, WIDTH))})
    with self.assertRaisesRegex(transforms.DirectionsError, "also the directions' extra_arg"):
      transforms.attribute(directions, rows_arg="span")
    site = transforms.site_directions({"resid": np.eye(2, WIDTH)}, LINKS)
    with self.assertRaisesRegex(transforms.DirectionsError, "needs dictionary_directions"):
      transforms.attribute(site, rows_arg="rows")


if __name__ == "__main__":
  absltest.main()
