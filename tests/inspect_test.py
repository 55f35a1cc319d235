"""Treescope views of sites, bases and captures: text for notebooks, standalone HTML files."""

import os
import tempfile

import jax
import numpy as np
from absl.testing import absltest

from landscape import inspect as landscape_inspect
from landscape import models
from landscape.directions import capture
from landscape.directions import make_basis


class InspectTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = models.mlp(64, (16, 8), 10)
    cls.params = cls.model.init(jax.random.PRNGKey(0))
    cls.inputs = np.random.default_rng(0).normal(size=(12, 8, 8)).astype(np.float32)

  def test_model_view_lists_sites_widths_and_links(self):
    view = landscape_inspect.model_view(self.model, self.params, self.inputs[:2])
    self.assertEqual(list(view.sites), ["hidden_0", "hidden_1"])
    self.assertEqual((view.sites["hidden_0"].width, view.sites["hidden_0"].shape), (16, (2, 16)))
    self.assertIn("reads output/kernel axis 0", view.sites["hidden_1"].links)
    text = landscape_inspect.render_text(self.model, self.params, self.inputs[:2])
    self.assertIn("'hidden_1'", text)
    self.assertIn("width=8", text)

  def test_basis_view_shows_labels_provenance_and_orthonormality(self):
    basis = make_basis(np.random.default_rng(1).normal(size=(2, 16)), site="hidden_0",
                       labels=["red", "blue"], method="diff_of_means", source="val_id")
    view = landscape_inspect.basis_view(basis)
    self.assertEqual(view.labels, ("red", "blue"))
    self.assertLess(view.max_orthonormality_error, 1e-6)
    text = landscape_inspect.render_text(basis)
    for expected in ("'red'", "'diff_of_means'", "'val_id'", "float32(2, 16)"):
      self.assertIn(expected, text)

  def test_html_file_is_written_and_names_the_sites(self):
    basis = make_basis(np.eye(2, 16), site="hidden_0", labels=["a", "b"])
    captured = capture(self.model, self.params, {"inputs": self.inputs, "concept": np.arange(12) % 3},
                       max_rows=10)
    path = os.path.join(tempfile.mkdtemp(), "report", "sites.html")
    written = landscape_inspect.write_html(
        {"model": self.model, "basis": basis, "captures": captured}, path, title="mlp sites",
        params=self.params, example_inputs=self.inputs[:2])
    self.assertEqual(written, path)
    with open(path, encoding="utf-8") as handle:
      page = handle.read()
    self.assertTrue(page.startswith("<!DOCTYPE html>"))
    self.assertIn("<title>mlp sites</title>", page)
    for site in ("hidden_0", "hidden_1"):
      self.assertIn(site, page)
    self.assertIn("concept", page)
    self.assertFalse(os.path.exists(path + ".tmp"))

  def test_penzai_model_sites_render_too(self):
    model = models.penzai_mlp(64, (16,), 10)
    text = landscape_inspect.render_text(model, model.init(jax.random.PRNGKey(0)), self.inputs[:2])
    self.assertIn("'penzai_mlp'", text)
    self.assertIn("writes hidden/0/kernel axis 1", text)


if __name__ == "__main__":
  absltest.main()
