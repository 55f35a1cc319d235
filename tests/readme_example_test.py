"""README.md's examples run: a custom loss term and optax transform with landscape's; an intervention
in training, gradient routing, custom evaluation metrics and a warm start."""

import os
import re
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from landscape import training

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_example() -> str:
  with open(README) as handle:
    text = handle.read()
  block = re.search(r"<!-- readme-example: begin -->\n```python\n(.*?)```\n<!-- readme-example: end -->",
                    text, re.DOTALL)
  assert block, "README.md has no readme-example block"
  return block.group(1)


SECTION_BLOCKS = ("intervention", "routing", "metrics", "warm_start")


def readme_blocks() -> dict[str, str]:
  """The named blocks of README's section on interventions, routing, metrics and warm starts."""
  with open(README) as handle:
    text = handle.read()
  blocks = dict(re.findall(r"<!-- readme-example (\w+): begin -->\n```python\n(.*?)```\n"
                           r"<!-- readme-example \1: end -->", text, re.DOTALL))
  assert tuple(blocks) == SECTION_BLOCKS, f"README.md's named blocks are {list(blocks)}"
  return blocks


class ReadmeSectionTest(absltest.TestCase):
  """The section's blocks run in order in one namespace, as a reader would paste them."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.namespace = {}
    root = tempfile.mkdtemp()
    for name, block in readme_blocks().items():
      assert len(block.strip().splitlines()) <= 16, f"README block {name} is no longer short"
      block = block.replace('"/tmp/landscape/', '"' + root + "/")
      exec(compile(block, f"README.md:{name}", "exec"), cls.namespace)  # pylint: disable=exec-used

  def _params(self, name):
    return training.fetch(self.namespace[name].state.params)

  def test_the_intervention_acts_in_training_with_each_runs_value(self):
    summary = self.namespace["steered"].summary
    self.assertEqual(summary["runs"], [{"seed": 0, "alpha": 0.0}, {"seed": 0, "alpha": 4.0}])
    self.assertLen(summary["eval/test/accuracy"], 2)
    steered, plain = self._params("steered"), self._params("measured")
    kernel = lambda params, run: params["output"]["kernel"][run]
    # alpha 0 adds exactly zero: the run trains as plain training does, up to the summation order
    # of a program holding two runs (a few float32 ulps over 100 Adam steps); alpha 4 does not.
    np.testing.assert_allclose(kernel(steered, 0), kernel(plain, 0), atol=1e-5)
    self.assertGreater(np.abs(kernel(steered, 1) - kernel(plain, 0)).max(), 1e-2)

  def test_routed_training_still_learns(self):
    self.assertGreater(self.namespace["routed"].summary["eval/test/accuracy"][0], 0.5)

  def test_the_custom_metric_is_the_mean_margin_of_the_final_model(self):
    params = jax.tree_util.tree_map(lambda leaf: leaf[0], self._params("measured"))
    test = self.namespace["dataset"].eval_sets["test"]
    logits, _ = self.namespace["model"].forward(params, jnp.asarray(test["inputs"]))
    logits = np.asarray(logits, np.float64)
    labels = test["labels"]
    true = logits[np.arange(len(labels)), labels]
    logits[np.arange(len(labels)), labels] = -np.inf
    expected = np.mean(true - logits.max(axis=-1))
    # float32 logits and a float32 mean over padded chunks against float64: a few ulps of ~10.
    np.testing.assert_allclose(self.namespace["measured"].summary["eval/test/margin"], [expected],
                               rtol=1e-5)

  def test_the_warm_started_layer_stays_frozen_and_the_head_trains(self):
    tuned = jax.tree_util.tree_map(lambda leaf: leaf[0], self._params("tuned"))
    pretrained = self.namespace["pretrained"]
    chex.assert_trees_all_equal(tuned["hidden"], pretrained["hidden"])
    self.assertGreater(np.abs(tuned["output"]["kernel"] - pretrained["output"]["kernel"]).max(), 1e-2)
    self.assertGreater(self.namespace["tuned"].summary["eval/test/accuracy"][0], 0.5)


class ReadmeExampleTest(absltest.TestCase):

  def test_example_runs_and_logs_every_term(self):
    example = readme_example()
    self.assertLess(len(example.strip().splitlines()), 30)
    workdir = tempfile.mkdtemp()
    example = example.replace('"/tmp/landscape/example"', repr(workdir))
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)  # pylint: disable=exec-used
    summary = namespace["result"].summary
    for name in ("task", "explanation", "concept_penalty", "sparsity"):
      self.assertLen(summary[f"loss/{name}"], 2)
    np.testing.assert_allclose(summary["weight/sparsity"], [1e-2 * 99 / 100] * 2, rtol=1e-5)
    self.assertGreater(min(summary["eval/ood/accuracy"]), 0.3)
    self.assertTrue(os.path.exists(os.path.join(workdir, "metrics.jsonl")))


if __name__ == "__main__":
  absltest.main()
