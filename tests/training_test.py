"""The training loop: sharding, pmap, seeds in one program, guards, and errors before compilation."""

import contextlib
import functools
import io
import json
import os
import shutil
import signal
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest
from absl.testing import parameterized
from flax import nnx

import landscape
import rounding
from landscape import data
from landscape import directions
from landscape import objectives
from landscape import training
from landscape.models import from_nnx
from landscape.sites import UnknownSiteError


class _TwoLayer(nnx.Module):

  def __init__(self, rngs):
    self.hidden = nnx.Linear(64, 32, rngs=rngs)
    self.out = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x, sites):
    x = x.reshape(x.shape[0], -1)
    return self.out(sites("hidden_0", jax.nn.relu(self.hidden(x))))

  def site_names(self):
    return ("hidden_0",)


MODEL = from_nnx(_TwoLayer, name="two_layer")
DATASET = data.digits()


def _config(**overrides):
  config = training.loop_config()
  config.steps = 30
  config.batch_size = 32
  config.log_every = 10
  config.eval_every = 0
  config.checkpoint_every = 0
  config.steps_per_call = 10
  config.tensorboard = False
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def _plain_training() -> dict:
  """`training.train`'s keyword arguments for plain cross-entropy training of MODEL on DATASET."""
  return dict(model=MODEL, objective=objectives.compose(objectives.cross_entropy()),
              optimizer=optax.adam(1e-2), dataset=DATASET)


def _train(config, objective=None, **kwargs):
  workdir = tempfile.mkdtemp()
  objective = objective or objectives.compose(objectives.cross_entropy())
  return training.train(config, workdir, model=MODEL, objective=objective,
                        optimizer=optax.adam(1e-2), dataset=DATASET, **kwargs), workdir


class ShardingTest(parameterized.TestCase):

  def test_there_are_eight_devices(self):
    self.assertEqual(jax.device_count(), 8)

  @parameterized.named_parameters(
      ("jit_8_devices", dict(**{"mesh.num_devices": 8})),
      ("pmap_8_devices", dict(parallelism="pmap", **{"mesh.num_devices": 8})),
      ("jit_2_seeds_8_devices", dict(num_seeds=2, **{"mesh.num_devices": 8})),
      ("pmap_2_seeds_4_devices", dict(num_seeds=2, parallelism="pmap", **{"mesh.num_devices": 4})),
  )
  def test_matches_one_device(self, overrides):
    num_seeds = overrides.get("num_seeds", 1)
    single, _ = _train(_config(num_seeds=num_seeds, **{"mesh.num_devices": 1}))
    sharded, _ = _train(_config(**overrides))
    # Not bitwise: another device count splits each batch's float32 matmuls and means over devices
    # (another summation order, a few ulps per step, compounded over 30 Adam steps of lr 1e-2);
    # 1e-5 is far above that and far below what a wrong gradient average would change.
    chex.assert_trees_all_close(training.fetch(sharded.state.params),
                                training.fetch(single.state.params), atol=1e-5, rtol=0)
    np.testing.assert_allclose(sharded.summary["loss"], single.summary["loss"], atol=1e-5)

  def test_state_is_sharded_over_seed_axis(self):
    result, _ = _train(_config(num_seeds=4, **{"mesh.num_devices": 8}))
    kernel = result.state.params["hidden"]["kernel"]
    self.assertEqual(kernel.shape, (4, 64, 32))
    self.assertEqual(kernel.sharding.spec[0], "seed")
    self.assertLen({shard.device for shard in kernel.addressable_shards}, 8)

  def test_model_axis_rule_shards_parameters_and_agrees(self):
    rules = [(r"hidden/kernel$", (None, "model")), (r"out/kernel$", ("model", None))]
    single, _ = _train(_config(**{"mesh.num_devices": 1}))
    sharded, _ = _train(_config(**{"mesh.num_devices": 8, "mesh.model": 4}), param_rules=rules)
    # Within float32 rounding, not bitwise: a kernel split over the model axis sums its matmul in
    # another order (see test_matches_one_device).
    kernel = sharded.state.params["hidden"]["kernel"]
    self.assertEqual(kernel.sharding.spec, jax.sharding.PartitionSpec("seed", None, "model"))
    self.assertEqual(kernel.addressable_shards[0].data.shape, (1, 64, 8))
    chex.assert_trees_all_close(training.fetch(sharded.state.params),
                                training.fetch(single.state.params), atol=1e-5, rtol=0)

  def test_rule_that_does_not_divide_names_leaf(self):
    rules = [(r"out/kernel$", (None, "model"))]  # 10 classes over a model axis of 4
    with self.assertRaisesRegex(training.ConfigError, r"out/kernel.*10.*'model'"):
      _train(_config(**{"mesh.num_devices": 8, "mesh.model": 4}), param_rules=rules)


class SeedsTest(absltest.TestCase):

  def test_seeds_in_one_program_equal_separate_runs(self):
    together, _ = _train(_config(num_seeds=3, seed=5, **{"mesh.num_devices": 1}))
    for index in range(3):
      alone, _ = _train(_config(num_seeds=1, seed=5 + index, **{"mesh.num_devices": 1}))
      chex.assert_trees_all_close(
          jax.tree_util.tree_map(lambda leaf: leaf[index], training.fetch(together.state.params)),
          jax.tree_util.tree_map(lambda leaf: leaf[0], training.fetch(alone.state.params)),
          atol=1e-6, rtol=0)
    self.assertEqual(together.summary["seeds"], [5, 6, 7])
    self.assertLen(together.summary["loss"], 3)

  def test_seeds_differ(self):
    together, _ = _train(_config(num_seeds=2, **{"mesh.num_devices": 1}))
    kernel = training.fetch(together.state.params)["hidden"]["kernel"]
    self.assertGreater(np.abs(kernel[0] - kernel[1]).max(), 1e-2)


class GridAndEvaluatorsTest(absltest.TestCase):

  def test_grid_points_train_together_like_separate_runs(self):
    @objectives.term("scaled_l2")
    def scaled_l2(inputs):
      return inputs.run.hparams["strength"] * jnp.mean(inputs.params["hidden"]["kernel"] ** 2)

    objective = objectives.compose(objectives.cross_entropy(), scaled_l2)
    grid = [{"strength": 0.0}, {"strength": 50.0}]
    together, _ = _train(_config(num_seeds=2, **{"mesh.num_devices": 4}), objective, hparam_grid=grid)
    self.assertEqual(together.summary["runs"], [{"seed": 0, "strength": 0.0}, {"seed": 1, "strength": 0.0},
                                                {"seed": 0, "strength": 50.0}, {"seed": 1, "strength": 50.0}])
    kernels = training.fetch(together.state.params)["hidden"]["kernel"]
    for index, (point, seed) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
      alone, _ = _train(_config(seed=seed, **{"mesh.num_devices": 1}), objective,
                        hparam_grid=[grid[point]])
      np.testing.assert_allclose(kernels[index], training.fetch(alone.state.params)["hidden"]["kernel"][0],
                                 atol=1e-6)
    self.assertLess(np.sum(kernels[2] ** 2), 0.5 * np.sum(kernels[0] ** 2))

  def test_evaluators_are_logged_at_every_evaluation(self):
    def kernel_norm(params, run):
      del run
      return {"probe/kernel_norm": jnp.sqrt(jnp.sum(params["hidden"]["kernel"] ** 2, axis=(1, 2)))}

    result, workdir = _train(_config(eval_every=10, num_seeds=2), evaluators=[kernel_norm])
    rows = [row for row in training.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
            if "probe/kernel_norm" in row]
    self.assertEqual([row["step"] for row in rows], [0, 10, 20, 30])
    final = np.sqrt(np.sum(training.fetch(result.state.params)["hidden"]["kernel"] ** 2, axis=(1, 2)))
    np.testing.assert_allclose(rows[-1]["probe/kernel_norm"], final, rtol=1e-5)


class CompiledInitTest(absltest.TestCase):

  def test_init_in_parts_equals_init_state_in_one_program(self):
    digit_concepts = data.array_dataset(
        "digits_concept", {"inputs": DATASET.arrays["inputs"],
                           "concept": DATASET.arrays["labels"] % 2}, {})
    refreshers = (directions.refit_basis("basis", model=MODEL, site="hidden_0", data=digit_concepts,
                                         num_classes=2, every=5, batch_size=64),
                  directions.refit_class_means("means", model=MODEL, site="hidden_0",
                                               data=digit_concepts, num_classes=2, every=5,
                                               batch_size=64))
    objective = objectives.compose(objectives.cross_entropy(), objectives.adversarial_probe(
        "hidden_0", width=32, num_classes=2, inputs_key="inputs", concept_key="labels"))
    parts = dict(model=MODEL, objective=objective, optimizer=optax.adam(1e-2),
                 refreshers=refreshers)
    in_one_program = jax.jit(functools.partial(training.init_state, **parts))
    in_parts = training.compile_init(**parts)
    warm = {"out": {"bias": np.linspace(-1.0, 1.0, 10, dtype=np.float32)}}
    for seed, hparams, initial_params in ((0, None, None), (3, {"weight": 0.5, "site": 1}, warm)):
      key = jax.random.PRNGKey(seed)
      expected = in_one_program(key, hparams=hparams, initial_params=initial_params)
      got = in_parts(key, hparams=hparams, initial_params=initial_params)
      self.assertEqual(jax.tree_util.tree_structure(got), jax.tree_util.tree_structure(expected))
      # The same operations on the same values; only how XLA groups them into programs differs,
      # which may round the refitted directions' float32 arithmetic differently.
      chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)
      for name in ("params", "rng", "data_key", "hparams"):
        chex.assert_trees_all_equal(getattr(got, name), getattr(expected, name))
      self.assertEqual({name: value.dtype for name, value in got.hparams.items()},
                       {name: value.dtype for name, value in expected.hparams.items()})


class FixedValueTest(absltest.TestCase):

  def test_a_fixed_value_is_read_by_the_step_and_resuming_with_another_is_refused(self):
    def scaled_objective():
      @objectives.term("scaled")
      def scaled(inputs):
        losses, weights = objectives.per_example_cross_entropy(inputs.outputs, inputs.batch)
        return inputs.run.refreshed["scale"] * jnp.sum(losses * weights) / jnp.sum(weights)
      return objectives.compose(scaled)

    config = _config(steps=20, checkpoint_every=10)
    workdir = tempfile.mkdtemp()
    one = jnp.asarray(1.0, jnp.float32)
    result = training.train(config, workdir, model=MODEL, objective=scaled_objective(),
                            optimizer=optax.adam(1e-2), dataset=DATASET,
                            refreshers=(training.FixedValue("scale", one),))
    np.testing.assert_array_equal(training.fetch(result.state.refreshed["scale"]), [1.0])
    plain, _ = _train(_config(steps=20, checkpoint_every=10))
    # Times a held 1.0: the same losses as plain training, to float32 rounding.
    np.testing.assert_allclose(result.summary["loss"], plain.summary["loss"], rtol=1e-6)
    config.steps = 30
    for other in (jnp.asarray(2.0, jnp.float32), {"scale": one}):  # another value; another tree
      with self.assertRaisesRegex(training.RunMismatchError, r"refreshers"):
        training.train(config, workdir, model=MODEL, objective=scaled_objective(),
                       optimizer=optax.adam(1e-2), dataset=DATASET,
                       refreshers=(training.FixedValue("scale", other),))
    resumed = training.train(config, workdir, model=MODEL, objective=scaled_objective(),
                             optimizer=optax.adam(1e-2), dataset=DATASET,
                             refreshers=(training.FixedValue("scale", one),))
    self.assertEqual(resumed.summary["step"], 30)


class InterimEvalSetsTest(absltest.TestCase):

  def test_interim_evaluations_cover_the_named_sets_and_the_last_covers_every_set(self):
    calls = []

    def record_step(params, run):
      del params
      calls.append(int(np.asarray(run.step)[0]))
      return {}

    every, _ = _train(_config(eval_every=10))
    interim, workdir = _train(_config(eval_every=10, interim_eval_sets="test"),
                              evaluators=[record_step])
    rows = [row for row in training.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
            if any(name.startswith("eval/") for name in row)]
    self.assertEqual([(row["step"], sorted({name.split("/")[1] for name in row if "/" in name}))
                      for row in rows],
                     [(0, ["test"]), (10, ["test"]), (20, ["test"]), (30, ["test", "val"])])
    self.assertEqual(calls, [0, 10, 20, 30])  # evaluators run at every evaluation
    # The same computation: every evaluation equals the all-sets run's on the sets it covers.
    for step, metrics in interim.evaluations.items():
      for name, values in metrics.items():
        np.testing.assert_array_equal(values, every.evaluations[step][name], err_msg=name)
    self.assertEqual(set(interim.summary), set(every.summary))

  def test_a_last_and_interim_evaluator_measures_its_last_part_only_at_the_last_step(self):
    def measuring(name):
      def evaluate(params, run):
        return {name: np.asarray(run.step, np.float32) + 0 * params["hidden"]["kernel"][:, 0, 0]}
      return evaluate

    staged = training.LastAndInterim(last=measuring("probe/last"), interim=measuring("probe/interim"))
    last_only = training.LastAndInterim(last=measuring("probe/last_only"))
    result, workdir = _train(_config(eval_every=10, num_seeds=2), evaluators=[staged, last_only])
    rows = training.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    steps_with = lambda name: [row["step"] for row in rows if name in row]
    self.assertEqual(steps_with("probe/interim"), [0, 10, 20])
    self.assertEqual(steps_with("probe/last"), [30])
    self.assertEqual(steps_with("probe/last_only"), [30])
    self.assertEqual(result.summary["probe/last"], [30.0, 30.0])
    self.assertNotIn("probe/interim", result.summary)

  def test_a_run_resumed_with_fewer_steps_logs_its_last_evaluation_in_full(self):
    def preempt_at_step_20(params, run):
      del params
      if int(np.asarray(run.step)[0]) == 20:
        os.kill(os.getpid(), signal.SIGTERM)  # the loop checkpoints step 20 and stops
      return {}

    workdir = tempfile.mkdtemp()
    config = _config(steps=40, eval_every=10, checkpoint_every=20, interim_eval_sets="test")
    with self.assertRaises(training.Preempted):
      training.train(config, workdir, evaluators=[preempt_at_step_20], **_plain_training())
    config.steps = 20  # resumed at its last step: step 20's evaluation was logged as an interim one
    result = training.train(config, workdir, **_plain_training())
    rows = [row for row in training.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
            if row["step"] == 20 and "eval/val/accuracy" in row]
    self.assertLen(rows, 1)
    self.assertEqual(rows[0]["eval/val/accuracy"], result.summary["eval/val/accuracy"][0])

  def test_an_interim_set_the_dataset_lacks_is_refused_before_anything_is_written(self):
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    with self.assertRaisesRegex(training.ConfigError,
                                r"config\.interim_eval_sets='test,tset': \['tset'\] not among the "
                                r"eval sets of .*\['test', 'val'\]"):
      training.train(_config(interim_eval_sets="test,tset"), workdir, **_plain_training())
    self.assertFalse(os.path.exists(workdir))


class HyperparameterTypesTest(parameterized.TestCase):

  def test_an_integer_grid_value_is_an_int32_choice_and_a_float_stays_float32(self):
    seen = {}

    @objectives.term("chosen_row")
    def chosen_row(inputs):
      seen["index"], seen["strength"] = inputs.run.hparams["index"], inputs.run.hparams["strength"]
      row = jnp.take(inputs.params["hidden"]["kernel"], inputs.run.hparams["index"], axis=0)
      return inputs.run.hparams["strength"] * jnp.sum(row ** 2)

    grid = [{"index": 0, "strength": 1.0}, {"index": 3, "strength": 1.0}]
    result, _ = _train(_config(steps=10, num_seeds=1),
                       objectives.compose(objectives.cross_entropy(), chosen_row), hparam_grid=grid)
    self.assertEqual((seen["index"].dtype, seen["strength"].dtype), (jnp.int32, jnp.float32))
    hparams = training.fetch(result.state.hparams)
    np.testing.assert_array_equal(hparams["index"], np.asarray([0, 3], np.int32))
    self.assertEqual(hparams["index"].dtype, np.int32)
    self.assertEqual(result.summary["runs"], [{"seed": 0, "index": 0, "strength": 1.0},
                                              {"seed": 0, "index": 3, "strength": 1.0}])

  @parameterized.named_parameters(
      ("different_names", [{"a": 1.0}, {"b": 1.0}], r"hparam_grid\[1\] names \['b'\], "
                                                    r"hparam_grid\[0\] names \['a'\]"),
      ("mixed_types", [{"a": 1}, {"a": 0.5}], r"'a' is an integer at some points and not at others"),
      ("not_finite", [{"a": float("nan")}], r"hparam_grid\[0\]\['a'\]=nan: not finite"),
      ("not_a_number", [{"a": "big"}], r"hyper-parameter 'a'='big' \(str\)"),
      ("seed", [{"seed": 3}], r"hparam_grid\[0\] names 'seed'"),
      ("empty", [], r"hparam_grid=\[\]: expected a non-empty list"),
  )
  def test_a_grid_that_cannot_be_one_program_is_refused_before_anything_is_written(self, grid,
                                                                                    pattern):
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    with self.assertRaisesRegex(landscape.BadInputError, pattern):
      training.train(_config(), workdir, hparam_grid=grid, **_plain_training())
    self.assertFalse(os.path.exists(workdir))


class OutputsTest(absltest.TestCase):

  def test_metrics_summary_and_evaluation(self):
    result, workdir = _train(_config(eval_every=10, checkpoint_every=20))
    rows = training.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    train_steps = [row["step"] for row in rows if "loss" in row]
    eval_steps = [row["step"] for row in rows if "eval/test/accuracy" in row]
    self.assertEqual(train_steps, [10, 20, 30])
    self.assertEqual(eval_steps, [0, 10, 20, 30])
    with open(os.path.join(workdir, "summary.json")) as handle:
      summary = json.load(handle)
    self.assertEqual(summary["step"], 30)
    # metrics.jsonl writes a number for one run; summary.json a list over runs, always.
    self.assertEqual(summary["loss"], [[row for row in rows if "loss" in row][-1]["loss"]])
    self.assertEqual(summary["digest"], training.params_digest(training.fetch(result.state.params)))
    self.assertGreater(summary["eval/test/accuracy"][0], 0.5)
    per_run = {name: value for name, value in summary.items() if "/" in name or name == "loss"}
    self.assertEqual({name: len(value) for name, value in per_run.items()},
                     {name: 1 for name in per_run})  # one entry per run, one run

  def test_evaluation_matches_a_direct_forward_pass(self):
    result, _ = _train(_config())
    params = jax.tree_util.tree_map(lambda leaf: leaf[0], training.fetch(result.state.params))
    test = DATASET.eval_sets["test"]
    logits, _ = MODEL.forward(params, jnp.asarray(test["inputs"]))
    # The loop evaluates sharded over 8 devices in padded chunks: equal up to near-tied examples.
    rounding.assert_accuracy_within_rounding(self, result.summary["eval/test/accuracy"][0], logits,
                                             test["labels"])

  def test_rerun_after_completion_reproduces_summary(self):
    config = _config(checkpoint_every=10)
    workdir = tempfile.mkdtemp()
    kwargs = _plain_training()
    first = training.train(config, workdir, **kwargs)
    again = training.train(config, workdir, **kwargs)
    self.assertEqual(first.summary["digest"], again.summary["digest"])
    self.assertEqual(first.summary["loss"], again.summary["loss"])
    rows = training.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    logged = [(row["step"], "loss" in row) for row in rows]
    self.assertEqual(logged, [(10, True), (20, True), (30, True), (30, False)])

  def test_fresh_restart_without_checkpoints_starts_a_new_metrics_file(self):
    config = _config(eval_every=10)
    workdir = tempfile.mkdtemp()
    kwargs = _plain_training()
    training.train(config, workdir, **kwargs)
    first = training.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    self.assertNotEmpty(first)
    shutil.rmtree(os.path.join(workdir, "checkpoints"))  # as after a crash before the first save
    training.train(config, workdir, **kwargs)
    self.assertEqual(training.read_jsonl(os.path.join(workdir, "metrics.jsonl")), first)

  def test_a_last_line_cut_short_is_dropped(self):
    path = os.path.join(tempfile.mkdtemp(), "metrics.jsonl")
    with open(path, "w") as handle:
      handle.write('{"step": 10, "loss": 0.5}\n{"step": 20, "lo')
    self.assertEqual(training.read_jsonl(path), [{"step": 10, "loss": 0.5}])


class _Autoencoder(nnx.Module):

  def __init__(self, rngs):
    self.encoder = nnx.Linear(64, 8, rngs=rngs)
    self.decoder = nnx.Linear(8, 64, rngs=rngs)

  def __call__(self, x, sites):
    return self.decoder(sites("code", jax.nn.relu(self.encoder(x.reshape(x.shape[0], -1)))))

  def site_names(self):
    return ("code",)


AUTOENCODER = from_nnx(_Autoencoder, name="autoencoder")


@objectives.term("reconstruction")
def _reconstruction(inputs):
  flat = inputs.batch["inputs"].reshape(inputs.batch["inputs"].shape[0], -1)
  return jnp.mean((inputs.outputs - flat) ** 2)


def _per_example_squared_error(outputs, batch):
  return jnp.mean((outputs - batch["inputs"].reshape(outputs.shape)) ** 2, axis=-1)


class EvaluationMetricsTest(absltest.TestCase):

  def test_classification_metrics_on_an_autoencoder_are_refused_before_compiling(self):
    # The old loop reported this model's "accuracy" (argmax of 64 reconstructed pixels) silently.
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    arguments = dict(model=AUTOENCODER, objective=objectives.compose(_reconstruction),
                     optimizer=optax.adam(1e-2), dataset=DATASET, progress=False)
    with self.assertRaisesRegex(training.ClassificationMetricsError,
                                r"eval_metrics \['accuracy', 'loss'\] are classification metrics "
                                r"\(the default when none are given\), but model 'autoencoder' "
                                r"outputs 64 values per example; the dataset's info gives 10 "
                                r"classes .*pass eval_metrics=\{\}"):
      training.train(_config(), workdir, **arguments)
    self.assertFalse(os.path.exists(workdir))
    result = training.train(_config(steps=10), workdir, eval_metrics={
        "squared_error": _per_example_squared_error}, **arguments)
    self.assertNotIn("eval/test/accuracy", result.summary)
    params = jax.tree_util.tree_map(lambda leaf: leaf[0], training.fetch(result.state.params))
    test = DATASET.eval_sets["test"]
    outputs, _ = AUTOENCODER.forward(params, jnp.asarray(test["inputs"]))
    expected = np.mean((np.asarray(outputs, np.float64) - test["inputs"].reshape(-1, 64)) ** 2)
    # float32 squares summed per example and averaged over padded chunks against float64.
    np.testing.assert_allclose(result.summary["eval/test/squared_error"], [expected], rtol=1e-5)

  def test_classification_metrics_on_a_classifier_pass_the_check(self):
    training.check_classification_metrics(MODEL, jax.eval_shape(MODEL.init, jax.random.PRNGKey(0)),
                                          DATASET, objectives.CLASSIFICATION_METRICS)
    unlabelled = data.array_dataset("unlabelled", {"inputs": DATASET.arrays["inputs"]},
                                    {"test": {"inputs": DATASET.eval_sets["test"]["inputs"]}})
    with self.assertRaisesRegex(training.ClassificationMetricsError,
                                r"eval set 'test' of dataset 'unlabelled' has no labels"):
      training.check_classification_metrics(
          MODEL, jax.eval_shape(MODEL.init, jax.random.PRNGKey(0)), unlabelled,
          {"accuracy": objectives.per_example_accuracy})

  def test_evaluation_interventions_with_a_wrong_signature_are_refused_before_compiling(self):
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    one_argument = lambda run: {"hidden_0": lambda act: act}
    with self.assertRaisesRegex(landscape.BadInputError,
                                r"eval_interventions: interventions .*<lambda> has signature \(run\); "
                                r"expected \(run, batch\)"):
      training.train(_config(), workdir, eval_interventions=one_argument, **_plain_training())
    self.assertFalse(os.path.exists(workdir))
    with self.assertRaisesRegex(landscape.BadInputError, r"eval_interventions: interventions is a dict"):
      training.make_eval_step(model=MODEL, metric_fns=objectives.CLASSIFICATION_METRICS,
                              interventions={"hidden_0": lambda act: act})


class ProgressTest(absltest.TestCase):

  def _stderr_of_train(self, **arguments):
    from absl import logging  # pylint: disable=g-import-not-at-top
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)  # as in a script or a notebook: absl's INFO is not shown
    stream = io.StringIO()
    try:
      with contextlib.redirect_stderr(stream):
        training.train(_config(steps=20), tempfile.mkdtemp(), **_plain_training(), **arguments)
    finally:
      logging.set_verbosity(verbosity)
    return stream.getvalue()

  def test_train_called_from_python_shows_progress(self):
    printed = self._stderr_of_train()
    self.assertRegex(printed, r"step 10/20  loss \d+\.\d{4}  \d+\.\d steps/s  ETA \d+:\d\d")
    self.assertIn("step 20/20", printed)

  def test_progress_false_shows_nothing(self):
    self.assertNotIn("steps/s", self._stderr_of_train(progress=False))


class GuardsTest(absltest.TestCase):

  def test_non_finite_term_stops_with_step_and_name(self):
    @objectives.term("explodes", weight=1.0)
    def explodes(inputs):
      return jnp.where(inputs.step >= 13, jnp.nan, 0.0)

    objective = objectives.compose(objectives.cross_entropy(), explodes)
    config = _config(checkpoint_every=10, steps_per_call=5)
    workdir = tempfile.mkdtemp()
    with self.assertRaisesRegex(training.NonFiniteLossError,
                                r"step 13 \(the update logged as step 14\): term\(s\) \['explodes'\].*"
                                r"last good checkpoint \(step 10\)"):
      training.train(config, workdir, model=MODEL, objective=objective,
                     optimizer=optax.adam(1e-2), dataset=DATASET)
    checkpoints = training.Checkpoints(os.path.join(workdir, "checkpoints"), max_to_keep=2)
    self.assertEqual(checkpoints.all_steps(), [10])
    abstract = jax.eval_shape(
        lambda: training.stack_runs([
            training.init_state(jax.random.PRNGKey(0), model=MODEL, objective=objective,
                                optimizer=optax.adam(1e-2))]))
    restored = checkpoints.restore(10, abstract)
    self.assertEqual(int(restored.step), 10)
    self.assertTrue(all(np.isfinite(np.asarray(leaf)).all()
                        for leaf in jax.tree_util.tree_leaves(restored.params)))

  def test_non_finite_update_stops_although_the_loss_is_finite(self):
    breaks_at_13 = optax.scale_by_schedule(lambda count: jnp.where(count >= 13, jnp.nan, 1.0))
    workdir = tempfile.mkdtemp()
    with self.assertRaisesRegex(training.NonFiniteLossError,
                                r"training went non-finite at step 13 .*every term was finite but not the "
                                r"gradient, update or "
                                r"parameters .*'update_norm': \[nan\].*last good checkpoint \(step 10\)"):
      training.train(_config(checkpoint_every=10, steps_per_call=5), workdir, model=MODEL,
                     objective=objectives.compose(objectives.cross_entropy()),
                     optimizer=optax.chain(optax.adam(1e-2), breaks_at_13), dataset=DATASET)
    checkpoints = training.Checkpoints(os.path.join(workdir, "checkpoints"), max_to_keep=2)
    self.assertEqual(checkpoints.all_steps(), [10])

  def test_unknown_objective_site_fails_before_compiling(self):
    @objectives.term("reads_missing_site", sites=("hidden_7",))
    def reads_missing_site(inputs):
      return jnp.sum(inputs.acts["hidden_7"])

    with self.assertRaisesRegex(UnknownSiteError, r"hidden_7.*hidden_0"):
      _train(_config(), objectives.compose(objectives.cross_entropy(), reads_missing_site))


class _StepCounter:
  """A refresher due every ``every`` steps whose update records the steps it actually ran on."""

  def __init__(self, name="counter", every=5):
    self.name, self.every, self.ran_at = name, every, []

  def init(self, key, params):
    del key, params
    return jnp.zeros((), jnp.int32)

  def update(self, value, *, params, step, key, run):
    del params, key, run

    def refresh():
      # Runs only when this branch is taken; a cond turned select would run it at every step.
      jax.debug.callback(lambda at: self.ran_at.append(int(at)), step)
      return value + 1

    return jax.lax.cond(step % self.every == 0, refresh, lambda: value)


class SharedStepTest(absltest.TestCase):

  def test_step_is_one_scalar_beside_run_stacked_fields(self):
    result, _ = _train(_config(num_seeds=2, **{"mesh.num_devices": 2}))
    self.assertEqual(result.state.step.shape, ())
    self.assertEqual(int(result.state.step), 30)
    self.assertEqual(result.state.rng.shape[0], 2)
    self.assertEqual(result.state.params["hidden"]["kernel"].shape[0], 2)

  def test_a_scheduled_refresh_runs_only_on_the_steps_it_is_due(self):
    counter = _StepCounter(every=5)
    result, _ = _train(_config(steps=20, num_seeds=2, **{"mesh.num_devices": 1}),
                       refreshers=[counter])
    jax.effects_barrier()
    self.assertEqual(sorted(set(counter.ran_at)), [0, 5, 10, 15])
    np.testing.assert_array_equal(training.fetch(result.state.refreshed["counter"]), [4, 4])

  def test_the_chunk_branches_on_the_step_instead_of_selecting(self):
    objective = objectives.compose(objectives.cross_entropy())
    optimizer = optax.adam(1e-2)
    counter = _StepCounter(every=5)
    train_step = training.make_train_step(model=MODEL, objective=objective, optimizer=optimizer,
                                          refreshers=[counter])
    state = training.stack_runs([
        training.init_state(jax.random.PRNGKey(seed), model=MODEL, objective=objective,
                            optimizer=optimizer, refreshers=[counter]) for seed in range(2)])
    chunk = training.make_chunk(train_step, DATASET, 8)
    jaxpr = str(jax.make_jaxpr(chunk, static_argnums=(2,))(state, DATASET.arrays, 3))
    self.assertIn("cond[", jaxpr)


class NamesTest(absltest.TestCase):

  def test_duplicate_and_reserved_refresher_names_are_refused_before_compiling(self):
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    refreshers = [_StepCounter("basis"), _StepCounter("basis"), _StepCounter("hparams")]
    with self.assertRaisesRegex(landscape.BadInputError,
                                r"duplicate refresher names \['basis'\].*reserved refresher names "
                                r"\['hparams'\]"):
      training.train(_config(), workdir, refreshers=refreshers, **_plain_training())
    self.assertFalse(os.path.exists(workdir))

  def test_duplicate_and_reserved_term_names_are_refused_before_compiling(self):
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    loss_named_loss = objectives.cross_entropy(name="loss")
    with self.assertRaisesRegex(landscape.BadInputError, r"reserved term names \['loss'\]"):
      training.train(_config(), workdir, **dict(
          _plain_training(), objective=objectives.compose(loss_named_loss)))
    self.assertFalse(os.path.exists(workdir))
    with self.assertRaisesRegex(landscape.BadInputError, r"duplicate term names \['task'\]"):
      objectives.compose(objectives.cross_entropy(), objectives.cross_entropy())
    with self.assertRaisesRegex(landscape.BadInputError, r"reserved term names \['transform1'\]"):
      training.make_train_step(
          model=MODEL, optimizer=optax.adam(1e-2),
          objective=objectives.compose(objectives.cross_entropy(name="transform1")))


class EvaluationInterventionsTest(absltest.TestCase):

  def test_evaluation_interventions_see_the_run_and_the_batch(self):
    def silence_zeros(run, batch):
      keep_B = (batch["labels"] != 0).astype(jnp.float32) * run.hparams["gain"]
      at_the_end = (run.step == 30).astype(jnp.float32)
      return {"hidden_0": lambda act: act * (keep_B * at_the_end)[:, None]}

    result, _ = _train(_config(), eval_interventions=silence_zeros, hparam_grid=[{"gain": 1.0}])
    params = jax.tree_util.tree_map(lambda leaf: leaf[0], training.fetch(result.state.params))
    test = DATASET.eval_sets["test"]
    keep = (test["labels"] != 0).astype(np.float32)[:, None]
    logits, _ = MODEL.forward(params, jnp.asarray(test["inputs"]),
                              interventions={"hidden_0": lambda act: act * keep})
    plain, _ = MODEL.forward(params, jnp.asarray(test["inputs"]))
    accuracy = lambda logits: np.mean(np.argmax(np.asarray(logits), -1) == test["labels"])
    self.assertAlmostEqual(result.summary["eval/test/accuracy"][0], accuracy(logits), places=5)
    self.assertNotAlmostEqual(accuracy(logits), accuracy(plain), places=3)


class ConfigErrorsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("too_many_devices", {"mesh.num_devices": 64}, r"config\.mesh\.num_devices=64: 8 device"),
      ("batch_not_divisible", {"batch_size": 30, "mesh.num_devices": 8},
       r"config\.batch_size=30: must be divisible by the mesh's data axis \(8"),
      ("seeds_not_divisible", {"num_seeds": 3, "mesh.seed": 2}, r"config\.num_seeds=3"),
      ("negative_steps", {"steps": -5}, r"config\.steps=-5: must be > 0"),
      ("unknown_parallelism", {"parallelism": "pmapp"}, r"config\.parallelism='pmapp'"),
      ("pmap_with_model_axis", {"parallelism": "pmap", "mesh.model": 2}, r"config\.mesh\.model=2"),
  )
  def test_bad_config_raises_before_anything_is_written(self, overrides, pattern):
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    with self.assertRaisesRegex(training.ConfigError, pattern):
      training.train(_config(**overrides), workdir, model=MODEL,
                     objective=objectives.compose(objectives.cross_entropy()),
                     optimizer=optax.adam(1e-2), dataset=DATASET)
    self.assertFalse(os.path.exists(workdir))

  def test_negative_learning_rate_names_field(self):
    config = training.optimizer_config(learning_rate=-0.1)
    with self.assertRaisesRegex(training.ConfigError, r"config\.optimizer\.learning_rate=-0\.1"):
      training.make_optimizer(config, total_steps=10)

  def test_resuming_with_a_different_config_names_the_field(self):
    config = _config(checkpoint_every=10)
    workdir = tempfile.mkdtemp()
    kwargs = _plain_training()
    training.train(config, workdir, **kwargs)
    changed = _config(checkpoint_every=10, batch_size=16)
    with self.assertRaisesRegex(training.ConfigError, r"config\.batch_size=16 \(the run has 32\)"):
      training.train(changed, workdir, **kwargs)
    shorter = _config(checkpoint_every=10, steps=20)
    with self.assertRaisesRegex(training.ConfigError, r"config\.steps=20: .*already at step 30"):
      training.train(shorter, workdir, **kwargs)
    with self.assertRaisesRegex(training.ConfigError, r"hparam_grid"):
      training.train(config, workdir, hparam_grid=[{"strength": 1.0}], **kwargs)
    longer = _config(checkpoint_every=10, steps=40)  # more steps is a continuation, not a change
    self.assertEqual(training.train(longer, workdir, **kwargs).summary["step"], 40)


if __name__ == "__main__":
  absltest.main()
