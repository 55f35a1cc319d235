"""A workdir resumes only the run that started there: anything that changes the computation is refused."""

import json
import os
import shutil
import tempfile

import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest
from absl.testing import parameterized

from landscape import data
from landscape import models
from landscape import objectives
from landscape import training
from landscape.training import _identity

MODEL = models.mlp(64, (8,), 10)
DATASET = data.digits()


@objectives.term("sparsity", weight=0.01, sites=["hidden_0"])
def sparsity(inputs):
  return jnp.mean(jnp.abs(inputs.acts["hidden_0"]))


def _config(**overrides):
  config = training.loop_config()
  config.update(dict(dict(steps=10, batch_size=16, log_every=10, eval_every=0, checkpoint_every=0,
                          steps_per_call=10, tensorboard=False), **overrides))
  return config


def _arguments(**changes):
  arguments = dict(model=MODEL, objective=objectives.compose(objectives.cross_entropy(), sparsity),
                   optimizer=optax.adam(1e-2), dataset=DATASET, progress=False)
  arguments.update(changes)
  return arguments


class _Counter:
  name = "counter"

  def init(self, key, params):
    del key, params
    return jnp.zeros((), jnp.int32)

  def update(self, value, *, params, step, key, run):
    del params, step, key, run
    return value + 1


def _with_sites_before():
  moved = objectives.Term(name="sparsity", fn=sparsity.fn, weight=0.01, sites=("hidden_0",),
                          sites_before=("hidden_0",))
  return objectives.compose(objectives.cross_entropy(), moved)


def _scale_hidden(run, batch):
  del run, batch
  return {"hidden_0": lambda act: 2.0 * act}


class RunIdentityTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = tempfile.mkdtemp()
    cls.first = training.train(_config(), cls.workdir, **_arguments())

  def _copy(self):
    workdir = os.path.join(tempfile.mkdtemp(), "copy")
    shutil.copytree(self.workdir, workdir)
    return workdir

  @parameterized.named_parameters(
      ("term_weight", lambda: dict(objective=objectives.compose(
          objectives.cross_entropy(weight=0.5), sparsity)),
       r"different objective: objective\.terms\[0\]\.weight: '0\.5' here, '1\.0' in the run"),
      ("term_removed", lambda: dict(objective=objectives.compose(objectives.cross_entropy())),
       r"objective\.terms\[1\]: \(absent\) here, \{'fn': '.*sparsity', .*'name': 'sparsity'"),
      ("sites_before", lambda: dict(objective=_with_sites_before()),
       r"objective\.terms\[1\]\.sites_before: \['hidden_0'\] here, \[\] in the run"),
      ("objective_interventions", lambda: dict(objective=objectives.compose(
          objectives.cross_entropy(), sparsity, interventions=_scale_hidden)),
       r"objective\.interventions: '.*_scale_hidden' here, None in the run"),
      ("hyperparameter_weight", lambda: dict(objective=objectives.compose(
          objectives.cross_entropy(weight=objectives.hyperparameter("w", 2.0)), sparsity),
          hparam_grid=None),
       r"objective\.terms\[0\]\.weight: \"Hyperparameter\(name='w', scale=2\.0\)\" here"),
      ("model", lambda: dict(model=models.mlp(64, (12,), 10)),
       r"different model, optimizer_state: model\.params\.hidden/0/bias: 'float32\[12\]' here, "
       r"'float32\[8\]' in the run"),
      ("optimizer", lambda: dict(optimizer=optax.sgd(1e-2)),
       r"different optimizer_state: optimizer_state\.arrays: 0 here, 9 in the run"),
      ("refreshers", lambda: dict(refreshers=[_Counter()]),
       r"different refreshers: refreshers\[0\]: \{'kind': '.*_Counter', 'name': 'counter'\} "
       r"here, \(absent\) in the run"),
      ("dataset", lambda: dict(dataset=data.array_dataset(
          "digits", {key: value[:500] for key, value in DATASET.arrays.items()},
          DATASET.eval_sets, info=DATASET.info)),
       r"different dataset: dataset\.arrays\.inputs: 'float32\[500, 8, 8\]' here, "
       r"'float32\[1078, 8, 8\]' in the run"),
      ("warm_start", lambda: dict(initial_params={"output": {"bias": np.zeros(10, np.float32)}}),
       r"different warm_start: warm_start: \{'digest': '[0-9a-f]{64}', 'layout': 'one set for "
       r"every run', 'params': \['output/bias'\]\} here, None in the run"),
  )
  def test_a_finished_run_is_not_returned_for_a_different_one(self, make_changes, pattern):
    # The old loop compared the config alone and handed back the first run's results.
    with self.assertRaisesRegex(training.RunMismatchError, pattern) as raised:
      training.train(_config(), self.workdir, **_arguments(**make_changes()))
    self.assertIn("use a fresh workdir", str(raised.exception))
    self.assertIsInstance(raised.exception, training.ConfigError)

  def test_the_same_call_resumes_and_returns_the_run(self):
    again = training.train(_config(), self.workdir, **_arguments())
    self.assertEqual(again.summary["digest"], self.first.summary["digest"])

  def test_config_json_holds_a_readable_fingerprint_beside_the_config(self):
    with open(os.path.join(self.workdir, "config.json")) as handle:
      saved = json.load(handle)
    self.assertEqual(saved["batch_size"], 16)
    fingerprint = saved["fingerprint"]
    self.assertEqual([term["name"] for term in fingerprint["objective"]["terms"]],
                     ["task", "sparsity"])
    self.assertEqual(fingerprint["objective"]["terms"][1]["sites"], ["hidden_0"])
    self.assertEqual(fingerprint["objective"]["terms"][1]["weight"], "0.01")
    self.assertEqual(fingerprint["model"]["params"]["hidden/0/kernel"], "float32[64, 8]")
    self.assertEqual(fingerprint["model"]["sites"], ["hidden_0"])
    self.assertEqual(fingerprint["dataset"]["name"], "digits")
    self.assertIsNone(fingerprint["warm_start"])

  def test_weights_are_described_by_stable_text(self):
    describe = _identity.describe_weight
    self.assertEqual(describe(0.5), "0.5")
    self.assertEqual(describe(objectives.hyperparameter("w", 2.0)),
                     "Hyperparameter(name='w', scale=2.0)")
    self.assertRegex(describe(optax.linear_schedule(0.0, 1.0, 10)),
                     r"^schedule optax\.schedules\..*\.<locals>\.schedule$")

  def test_a_finished_run_is_read_back_only_if_it_is_this_run(self):
    # What the studies (block_vs_reshape, concept_attribution) ask before reading an arm back.
    arguments = {name: value for name, value in _arguments().items() if name != "progress"}
    self.assertTrue(training.finished_run(_config(), self.workdir, **arguments))
    self.assertFalse(training.finished_run(_config(steps=20), self.workdir, **arguments))
    self.assertFalse(training.finished_run(_config(), os.path.join(self.workdir, "none"),
                                           **arguments))
    with self.assertRaisesRegex(training.ConfigError, r"config\.batch_size=8"):
      training.finished_run(_config(batch_size=8), self.workdir, **arguments)
    other = dict(arguments, objective=objectives.compose(objectives.cross_entropy()))
    with self.assertRaisesRegex(training.RunMismatchError, r"different objective"):
      training.finished_run(_config(), self.workdir, **other)
    with self.assertRaisesRegex(training.RunMismatchError, r"different optimizer"):
      training.finished_run(_config(), self.workdir, **dict(arguments, optimizer=optax.chain(
          optax.clip(1.0), optax.adam(1e-2))))

  def test_a_config_json_without_fingerprint_resumes_and_gains_one(self):
    workdir = self._copy()
    path = os.path.join(workdir, "config.json")
    with open(path) as handle:
      saved = json.load(handle)
    del saved["fingerprint"]
    with open(path, "w") as handle:
      json.dump(saved, handle)
    longer = training.train(_config(steps=20), workdir, **_arguments())
    self.assertEqual(longer.summary["step"], 20)
    with open(path) as handle:
      self.assertIn("fingerprint", json.load(handle))

  def test_without_a_fingerprint_a_changed_optimizer_is_caught_before_orbax(self):
    workdir = self._copy()
    path = os.path.join(workdir, "config.json")
    with open(path) as handle:
      saved = json.load(handle)
    del saved["fingerprint"]
    with open(path, "w") as handle:
      json.dump(saved, handle)
    # Orbax's own message was a raw tree mismatch; landscape's names the state and the fix.
    with self.assertRaisesRegex(training.RunMismatchError,
                                r"checkpoint of step 10 .* different train state \(opt_state\): "
                                r"opt_state/0/count: \(absent\) here, int32\[1\] in the checkpoint"
                                r".*use a fresh workdir"):
      training.train(_config(steps=20), workdir, **_arguments(optimizer=optax.sgd(1e-2)))


if __name__ == "__main__":
  absltest.main()
