"""Warm starts: runs that begin from given parameters, another run's checkpoint, or part of one."""

import dataclasses
import os
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest
from absl.testing import parameterized

from landscape import data
from landscape import models
from landscape import objectives
from landscape import training

MODEL = models.mlp(64, (8,), 10)
DATASET = data.digits()


def _config(**overrides):
  config = training.loop_config()
  config.update(dict(dict(steps=10, batch_size=16, log_every=10, eval_every=0, checkpoint_every=0,
                          steps_per_call=10, tensorboard=False), **overrides))
  config.mesh.num_devices = 1
  return config


def _train(config, workdir=None, **changes):
  arguments = dict(model=MODEL, objective=objectives.compose(objectives.cross_entropy()),
                   optimizer=optax.adam(1e-2), dataset=DATASET, progress=False)
  arguments.update(changes)
  return training.train(config, workdir or tempfile.mkdtemp(), **arguments)


def _params(result):
  return training.fetch(result.state.params)


def _run(tree, index):
  return jax.tree_util.tree_map(lambda leaf: leaf[index], tree)


class WarmStartTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.source_dir = tempfile.mkdtemp()  # two runs, checkpoints at 5 and 10
    cls.source = _train(_config(num_seeds=2, checkpoint_every=5, steps_per_call=5), cls.source_dir)

  def test_load_params_reads_a_checkpoint_run_stacked_or_one_run(self):
    stacked = training.load_params(self.source_dir)
    chex.assert_trees_all_equal(stacked, _params(self.source))
    chex.assert_trees_all_equal(training.load_params(self.source_dir, run=1),
                                _run(_params(self.source), 1))
    earlier = training.load_params(self.source_dir, step=5, run=0)
    self.assertGreater(np.abs(earlier["output"]["kernel"] -
                              _run(stacked, 0)["output"]["kernel"]).max(), 0)

  def test_warm_start_equals_a_model_whose_init_is_those_params(self):
    given = training.load_params(self.source_dir, run=1)
    warm = _train(_config(), initial_params=given)
    replaced = dataclasses.replace(MODEL, init=lambda key: jax.tree_util.tree_map(jnp.asarray, given))
    reference = _train(_config(), model=replaced)
    # Same computation from the same values: bitwise, and the optimizer starts fresh in both.
    chex.assert_trees_all_equal(_params(warm), _params(reference))
    chex.assert_trees_all_equal(training.fetch(warm.state.opt_state),
                                training.fetch(reference.state.opt_state))
    self.assertEqual(warm.summary["loss"], reference.summary["loss"])

  def test_part_of_the_tree_keeps_the_rest_freshly_initialised(self):
    given = {"output": training.load_params(self.source_dir, run=0)["output"]}
    frozen = optax.set_to_zero()  # the parameters stay where they started
    warm = _params(_train(_config(steps=1), initial_params=given, optimizer=frozen))
    fresh = _params(_train(_config(steps=1), optimizer=frozen))
    chex.assert_trees_all_equal(_run(warm, 0)["output"], given["output"])
    chex.assert_trees_all_equal(warm["hidden"], fresh["hidden"])
    self.assertGreater(np.abs(fresh["output"]["kernel"][0] - given["output"]["kernel"]).max(), 0)

  def test_one_set_is_broadcast_and_a_list_equals_the_stacked_sets(self):
    frozen = optax.set_to_zero()
    one = training.load_params(self.source_dir, run=0)
    broadcast = _params(_train(_config(num_seeds=2, steps=1), initial_params=one, optimizer=frozen))
    for index in range(2):
      chex.assert_trees_all_equal(_run(broadcast, index), one)
    stacked = training.load_params(self.source_dir)
    from_stacked = _train(_config(num_seeds=2), initial_params=stacked)
    from_list = _train(_config(num_seeds=2), initial_params=[_run(stacked, 0), _run(stacked, 1)])
    chex.assert_trees_all_equal(_params(from_stacked), _params(from_list))

  def test_a_resumed_warm_start_ends_where_an_uninterrupted_one_does(self):
    given = training.load_params(self.source_dir, run=0)
    straight = _train(_config(steps=20), initial_params=given)
    workdir = tempfile.mkdtemp()
    _train(_config(steps=10), workdir, initial_params=given)
    resumed = _train(_config(steps=20), workdir, initial_params=given)
    self.assertEqual(resumed.summary["digest"], straight.summary["digest"])
    other = training.load_params(self.source_dir, run=1)
    with self.assertRaisesRegex(training.RunMismatchError, r"warm_start\.digest"):
      _train(_config(steps=30), workdir, initial_params=other)

  @parameterized.named_parameters(
      ("wrong_shape", lambda: {"output": {"bias": np.zeros(7, np.float32)}},
       r"initial_params\['output'\]\['bias'\] has shape \(7,\); the model's parameter has shape "
       r"\(10,\)"),
      ("unknown_key", lambda: {"decoder": {"bias": np.zeros(10, np.float32)}},
       r"initial_params\['decoder'\]: the model has no such parameter; it has \['hidden', 'output'\]"),
      ("array_for_a_subtree", lambda: {"output": np.zeros(10, np.float32)},
       r"initial_params\['output'\] is a ndarray, but the model has a sub-tree there"),
      ("wrong_dtype", lambda: {"output": {"bias": np.zeros(10, np.int32)}},
       r"initial_params\['output'\]\['bias'\] has dtype int32; the model's parameter is float32"),
      ("list_length", lambda: [{"output": {"bias": np.zeros(10, np.float32)}}] * 3,
       r"initial_params is a list of 3 sets; this call trains 1 run"),
      ("mixed_layouts", lambda: {"output": {"bias": np.zeros((1, 10), np.float32),
                                            "kernel": np.zeros((8, 10), np.float32)}},
       r"mixes leaves of the model's shapes with run-stacked ones"),
  )
  def test_parameters_that_do_not_fit_are_refused_before_anything_is_written(self, make, pattern):
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    with self.assertRaisesRegex(training.WarmStartError, pattern):
      _train(_config(), workdir, initial_params=make())
    self.assertFalse(os.path.exists(workdir))

  def test_load_params_names_what_is_missing(self):
    with self.assertRaisesRegex(training.WarmStartError, r"has no checkpoints/"):
      training.load_params(tempfile.mkdtemp())
    with self.assertRaisesRegex(training.WarmStartError, r"step=7 is not among .*\[5, 10\]"):
      training.load_params(self.source_dir, step=7)
    with self.assertRaisesRegex(training.WarmStartError, r"run=2, but .* holds 2 run"):
      training.load_params(self.source_dir, run=2)


if __name__ == "__main__":
  absltest.main()
