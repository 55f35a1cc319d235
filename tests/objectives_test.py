"""Auxiliary loss terms against float64 NumPy references, and composed in the training loop."""

import os
import tempfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest
from absl.testing import parameterized

import landscape
import rounding
from landscape import data
from landscape import interventions
from landscape import models
from landscape import objectives
from landscape import training
from landscape.directions import BasisError
from landscape.directions import make_basis

SITE = "hidden_0"
HIDDEN = 16
NUM_CLASSES = 10
NUM_RESPONSES = 6
MODEL = models.mlp(64, (HIDDEN,), NUM_CLASSES)
TANH_MODEL = models.mlp(64, (HIDDEN,), NUM_CLASSES, activation=jnp.tanh)
BASIS = make_basis(np.random.default_rng(0).normal(size=(2, HIDDEN)), site=SITE)
STEERING_VECTOR = np.random.default_rng(1).normal(size=HIDDEN).astype(np.float32)


# --- NumPy float64 references -------------------------------------------------------------------

def _numpy_params(params):
  as64 = lambda leaf: np.asarray(leaf, np.float64)
  return (as64(params["hidden"]["0"]["kernel"]), as64(params["hidden"]["0"]["bias"]),
          as64(params["output"]["kernel"]), as64(params["output"]["bias"]))


def _relu(x):
  return np.maximum(x, 0.0)


def _numpy_hidden(params, inputs, activation=_relu):
  w1, b1, _, _ = _numpy_params(params)
  return activation(np.asarray(inputs, np.float64).reshape(len(inputs), -1) @ w1 + b1)


def _numpy_logits(params, hidden):
  _, _, w2, b2 = _numpy_params(params)
  return hidden @ w2 + b2


def _softmax(logits):
  shifted = np.exp(logits - logits.max(-1, keepdims=True))
  return shifted / shifted.sum(-1, keepdims=True)


def _log_softmax(logits):
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _numpy_summed_log_prob_gradients(params, inputs, activation="relu"):
  """(d sum_k log p / d inputs, d sum_k log p / d hidden) of the one-hidden-layer MLP, by hand."""
  w1, b1, w2, _ = _numpy_params(params)
  x = np.asarray(inputs, np.float64).reshape(len(inputs), -1)
  pre = x @ w1 + b1
  hidden = _relu(pre) if activation == "relu" else np.tanh(pre)
  probs = _softmax(_numpy_logits(params, hidden))
  # sum_k log p_k = sum_k z_k - K logsumexp(z): its gradient in z is 1 - K p.
  d_logits = 1.0 - probs.shape[-1] * probs
  d_hidden = d_logits @ w2.T
  d_pre = d_hidden * ((pre > 0) if activation == "relu" else 1.0 - hidden ** 2)
  return (d_pre @ w1.T).reshape(np.shape(inputs)), d_hidden


def _numpy_cross_entropy(logits, labels):
  return -np.mean(_log_softmax(logits)[np.arange(len(labels)), labels])


# --- Fixtures ----------------------------------------------------------------------------------

def _params(seed=0, model=MODEL):
  return model.init(jax.random.PRNGKey(seed))


def _batch(seed=0, batch_size=8):
  rng = np.random.default_rng(seed)
  inputs = rng.uniform(size=(batch_size, 8, 8)).astype(np.float32)
  return {
      "inputs": jnp.asarray(inputs),
      "labels": jnp.asarray(rng.integers(0, NUM_CLASSES, batch_size), jnp.int32),
      "mask": jnp.asarray(rng.uniform(size=inputs.shape) < 0.3, jnp.float32),
      "probe_inputs": jnp.asarray(rng.uniform(size=inputs.shape), jnp.float32),
      "probe_concept": jnp.asarray(rng.integers(0, 2, batch_size), jnp.int32),
      "responses": jnp.asarray(rng.normal(size=(batch_size, NUM_RESPONSES)), jnp.float32),
  }


def _run_view(step=0, hparams=None, refreshed=None, term_states=None):
  return objectives.RunView(step=jnp.asarray(step, jnp.int32), hparams=hparams or {},
                            refreshed=refreshed or {}, term_states=term_states or {})


def _loss(objective, params, batch, *, model=MODEL, step=0, term_states=None, hparams=None):
  """objective.loss on one step, jitted: (total, metrics)."""
  if term_states is None:
    term_states, _ = objective.init(jax.random.PRNGKey(1), params)

  def run(params, term_states):
    return objective.loss(model, params, term_states, batch=batch,
                          run=_run_view(step, hparams, term_states=term_states),
                          rng=jax.random.PRNGKey(2))

  return jax.jit(run)(params, term_states)


def _with_site_offset(model):
  """``model`` with a parameter ``offset`` (B, HIDDEN) added to hidden_0 before the site: the
  gradient in it is the model's gradient with respect to the site's activation."""
  inner = model.apply

  def apply(params, inputs, sites):
    def offset_sites(name, act):
      return sites(name, act + params["offset"] if name == SITE else act)
    return inner({key: value for key, value in params.items() if key != "offset"}, inputs, offset_sites)

  return models.Model(init=model.init, apply=apply, site_names=model.site_names, name="offset_mlp")


def _decoy_dataset():
  """Decoy digits with a probe set (concept independent of the label), a mask and observer responses."""
  shortcut = data.decoy_digits(train_decoy="label")
  independent = data.decoy_digits(train_decoy="random", seed=1)
  train = dict(shortcut.arrays)
  train["probe_inputs"] = independent.arrays["inputs"]
  train["probe_concept"] = (independent.arrays["concept"] >= 5).astype(np.int32)
  flat = train["inputs"].reshape(len(train["inputs"]), -1)
  projection = np.random.default_rng(2).normal(size=(64, NUM_RESPONSES)).astype(np.float32)
  train["responses"] = np.tanh(flat @ projection / 4.0).astype(np.float32)
  eval_sets = {"ood": {key: shortcut.eval_sets["ood"][key] for key in ("inputs", "labels")}}
  return data.array_dataset("decoy_with_probes", train, eval_sets)


DATASET = _decoy_dataset()


def _config(**overrides):
  config = training.loop_config()
  config.steps = 6
  config.batch_size = 32
  config.log_every = 3
  config.eval_every = 0
  config.checkpoint_every = 0
  config.steps_per_call = 3
  config.tensorboard = False
  config.async_checkpoints = False
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def _train(config, *terms, dataset=DATASET, **kwargs):
  workdir = tempfile.mkdtemp()
  objective = objectives.compose(objectives.cross_entropy(), *terms)
  result = training.train(config, workdir, model=MODEL, objective=objective,
                          optimizer=optax.adam(1e-2), dataset=dataset, **kwargs)
  return result, workdir


def _every_term():
  return [
      objectives.concept_penalty(SITE, BASIS, weight=0.1),
      objectives.adversarial_probe(SITE, width=HIDDEN, weight=0.5, hidden_size=8),
      objectives.explanation_penalty(weight=10.0),
      objectives.site_explanation_penalty(SITE, BASIS, weight=0.1),
      objectives.preventative_steering(SITE, STEERING_VECTOR, optax.linear_schedule(0.0, 2.0, 4)),
      objectives.observer_readout(SITE, width=HIDDEN, num_responses=NUM_RESPONSES),
      objectives.observer_readout(SITE, fit="ridge", name="ridge_readout", weight=0.5),
      objectives.rsa_alignment(SITE, weight=0.2),
      objectives.cka_alignment(SITE, weight=0.2),
      objectives.counterfactual_consistency(SITE, BASIS, weight=0.5),
  ]


# --- Terms against references ------------------------------------------------------------------

class ConceptPenaltyTest(parameterized.TestCase):

  @parameterized.parameters("l2", "l1")
  def test_matches_numpy(self, norm):
    params, batch = _params(), _batch()
    term = objectives.concept_penalty(SITE, BASIS, norm=norm)
    _, metrics = _loss(objectives.compose(term), params, batch)
    coords = _numpy_hidden(params, batch["inputs"]) @ np.asarray(BASIS.vectors, np.float64).T
    expected = np.mean(np.sum(coords ** 2 if norm == "l2" else np.abs(coords), axis=-1))
    np.testing.assert_allclose(metrics["loss/concept_penalty"], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["concept_penalty/mean_abs_coordinate"], np.mean(np.abs(coords)),
                               rtol=1e-5)

  def test_basis_from_a_refresher_over_positions(self):
    acts = np.random.default_rng(3).normal(size=(4, 5, HIDDEN)).astype(np.float32)
    term = objectives.concept_penalty(SITE, basis_key="refit")
    inputs = objectives.TermInputs(outputs=None, acts={SITE: jnp.asarray(acts)}, batch={}, params={},
                                   state=None, run=_run_view(refreshed={"refit": BASIS}),
                                   step=jnp.zeros((), jnp.int32),
                                   rng=jax.random.PRNGKey(0), forward=None)
    value, _ = jax.jit(term.fn)(inputs)
    coords = acts.astype(np.float64) @ np.asarray(BASIS.vectors, np.float64).T
    np.testing.assert_allclose(value, np.mean(np.sum(coords ** 2, -1)), rtol=1e-5)

  def test_l2_depends_on_the_span_only(self):
    params, batch = _params(), _batch()
    rotation = np.array([[np.cos(0.7), np.sin(0.7)], [-np.sin(0.7), np.cos(0.7)]])
    rotated = rotation @ np.asarray(BASIS.vectors, np.float64)
    _, given = _loss(objectives.compose(objectives.concept_penalty(SITE, BASIS)), params, batch)
    _, turned = _loss(objectives.compose(objectives.concept_penalty(SITE, rotated)), params, batch)
    np.testing.assert_allclose(given["loss/concept_penalty"], turned["loss/concept_penalty"], rtol=1e-5)

  def test_rejects_non_orthonormal_rows_and_two_sources(self):
    with self.assertRaisesRegex(BasisError, "not orthonormal"):
      objectives.concept_penalty(SITE, np.ones((2, HIDDEN)))
    with self.assertRaisesRegex(ValueError, "exactly one of basis= or basis_key="):
      objectives.concept_penalty(SITE, BASIS, basis_key="refit")


class AdversaryTest(absltest.TestCase):

  def test_reverse_gradient_flips_sign_and_keeps_value(self):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)
    f = lambda x: jnp.sum(jnp.sin(x) * x)
    reversed_f = lambda x: f(interventions.reverse_gradient(x, jnp.asarray(0.5, jnp.float32)))
    np.testing.assert_array_equal(jax.jit(reversed_f)(x), jax.jit(f)(x))
    np.testing.assert_array_equal(jax.jit(jax.grad(reversed_f))(x), -0.5 * jax.jit(jax.grad(f))(x))

  def test_model_gradient_at_site_is_minus_weight_times_probe_loss_gradient(self):
    params, batch = _params(), _batch()
    weight = 0.7
    term = objectives.adversarial_probe(SITE, width=HIDDEN, weight=weight)
    objective = objectives.compose(term)
    states, _ = objective.init(jax.random.PRNGKey(1), params)
    params = dict(params, offset=jnp.zeros((len(batch["inputs"]), HIDDEN), jnp.float32))
    grads, metrics = jax.grad(
        lambda p: _loss(objective, p, batch, model=_with_site_offset(MODEL), term_states=states),
        has_aux=True)(params)
    grad_site = grads["offset"]

    probe = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf, np.float64), states["adversary"])
    hidden = _numpy_hidden(params, batch["probe_inputs"])
    logits = hidden @ probe["output"]["kernel"] + probe["output"]["bias"]
    labels = np.asarray(batch["probe_concept"])
    one_hot = np.eye(2)[labels]
    probe_loss_gradient = (_softmax(logits) - one_hot) @ probe["output"]["kernel"].T / len(labels)
    np.testing.assert_allclose(metrics["loss/adversary"], _numpy_cross_entropy(logits, labels), rtol=1e-5)
    np.testing.assert_allclose(metrics["adversary/accuracy"],
                               np.mean(logits.argmax(-1) == labels), rtol=1e-6)
    np.testing.assert_allclose(grad_site, -weight * probe_loss_gradient, atol=1e-6)
    self.assertGreater(np.abs(probe_loss_gradient).max(), 1e-3)

  def test_probe_steps_with_its_own_optimizer_on_the_unweighted_gradient(self):
    params, batch = _params(), _batch()
    term = objectives.adversarial_probe(SITE, width=HIDDEN, weight=0.3, optimizer=optax.sgd(0.5))
    objective = objectives.compose(objectives.cross_entropy(), term)
    state = training.init_state(jax.random.PRNGKey(0), model=MODEL, objective=objective,
                                optimizer=optax.sgd(0.1))
    step = jax.jit(training.make_train_step(model=MODEL, objective=objective, optimizer=optax.sgd(0.1)))
    new_state, _ = step(state, batch)

    probe = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf, np.float64),
                                   state.term_states["adversary"])
    hidden = _numpy_hidden(state.params, batch["probe_inputs"])
    logits = hidden @ probe["output"]["kernel"] + probe["output"]["bias"]
    error = (_softmax(logits) - np.eye(2)[np.asarray(batch["probe_concept"])]) / len(hidden)
    expected = {"kernel": probe["output"]["kernel"] - 0.5 * hidden.T @ error,
                "bias": probe["output"]["bias"] - 0.5 * error.sum(0)}
    chex.assert_trees_all_close(new_state.term_states["adversary"]["output"], expected, atol=1e-5)

  def test_per_example_concept_is_read_at_every_position(self):
    acts = np.random.default_rng(8).normal(size=(4, 3, HIDDEN)).astype(np.float32)
    concept = np.array([0, 1, 1, 0], np.int32)
    term = objectives.adversarial_probe(SITE, width=HIDDEN, inputs_key=None, concept_key="concept")
    probe = term.init(jax.random.PRNGKey(0), None)
    inputs = objectives.TermInputs(outputs=None, acts={SITE: jnp.asarray(acts)},
                                   batch={"concept": jnp.asarray(concept)}, params={}, state=probe,
                                   run=_run_view(), step=jnp.zeros((), jnp.int32),
                                   rng=jax.random.PRNGKey(0), forward=None)
    value, metrics = jax.jit(term.fn)(inputs)
    logits = (acts.astype(np.float64) @ np.asarray(probe["output"]["kernel"], np.float64)
              + np.asarray(probe["output"]["bias"], np.float64)).reshape(-1, 2)
    labels = np.repeat(concept, 3)
    np.testing.assert_allclose(value, _numpy_cross_entropy(logits, labels), rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], np.mean(logits.argmax(-1) == labels))

  def test_probe_learns_a_learnable_concept(self):
    digits = data.digits()
    train = dict(digits.arrays, concept=(digits.arrays["labels"] >= 5).astype(np.int32))
    dataset = data.array_dataset("digits_concept", train, digits.eval_sets)
    term = objectives.adversarial_probe(SITE, width=HIDDEN, weight=0.0, hidden_size=8, inputs_key=None,
                                        concept_key="concept")
    result, workdir = _train(_config(steps=150, steps_per_call=50, log_every=50), term, dataset=dataset)
    rows = [row for row in training.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "loss" in row]
    self.assertLess(rows[-1]["adversary/loss"], 0.6 * rows[0]["adversary/loss"])
    self.assertGreater(rows[-1]["adversary/accuracy"], 0.85)
    self.assertIn("hidden", result.state.term_states["adversary"])


class ExplanationTest(absltest.TestCase):

  def test_input_penalty_matches_the_paper_by_hand(self):
    params, batch = _params(), _batch()
    _, metrics = _loss(objectives.compose(objectives.explanation_penalty()), params, batch)
    gradients, _ = _numpy_summed_log_prob_gradients(params, batch["inputs"])
    masked = np.asarray(batch["mask"], np.float64) * gradients
    per_example = np.sum(masked.reshape(len(masked), -1) ** 2, axis=1)
    np.testing.assert_allclose(metrics["loss/explanation"], np.mean(per_example), rtol=1e-4)
    np.testing.assert_allclose(metrics["explanation/masked_gradient_norm"],
                               np.mean(np.sqrt(per_example)), rtol=1e-4)

  def test_site_penalty_matches_numpy(self):
    params, batch = _params(), _batch()
    term = objectives.site_explanation_penalty(SITE, BASIS)
    _, metrics = _loss(objectives.compose(term), params, batch)
    _, d_hidden = _numpy_summed_log_prob_gradients(params, batch["inputs"])
    projected = d_hidden @ np.asarray(BASIS.vectors, np.float64).T
    np.testing.assert_allclose(metrics["loss/site_explanation"], np.mean(np.sum(projected ** 2, -1)),
                               rtol=1e-4)

  def test_site_penalty_with_an_example_mask_and_no_basis_matches_numpy(self):
    params, batch = _params(), _batch()
    forbidden = (np.arange(len(batch["labels"])) % 2).astype(np.float32)
    term = objectives.site_explanation_penalty(SITE, mask_key="forbidden")
    _, metrics = _loss(objectives.compose(term), params, dict(batch, forbidden=jnp.asarray(forbidden)))
    _, d_hidden = _numpy_summed_log_prob_gradients(params, batch["inputs"])
    per_example = forbidden * np.sum(d_hidden ** 2, -1)
    np.testing.assert_allclose(metrics["loss/site_explanation"], np.mean(per_example), rtol=1e-4)
    with self.assertRaisesRegex(ValueError, r"at most one of basis= and basis_key="):
      objectives.site_explanation_penalty(SITE, BASIS, basis_key="basis")

  def test_training_gradient_matches_finite_differences(self):
    """The second-order gradient (in the parameters, through the input gradient) of both penalties."""
    params, batch = _params(model=TANH_MODEL), _batch(batch_size=6)
    mask = np.asarray(batch["mask"], np.float64)
    rows = np.asarray(BASIS.vectors, np.float64)
    direction = jax.tree_util.tree_map(
        lambda leaf: np.random.default_rng(leaf.size).normal(size=leaf.shape), params)

    def numpy_penalties(params64):
      d_inputs, d_hidden = _numpy_summed_log_prob_gradients(params64, batch["inputs"], "tanh")
      input_penalty = np.mean(np.sum((mask * d_inputs).reshape(len(mask), -1) ** 2, axis=1))
      return np.array([input_penalty, np.mean(np.sum((d_hidden @ rows.T) ** 2, -1))])

    step = 1e-5
    shifted = lambda sign: jax.tree_util.tree_map(
        lambda leaf, d: np.asarray(leaf, np.float64) + sign * step * d, params, direction)
    expected = (numpy_penalties(shifted(1)) - numpy_penalties(shifted(-1))) / (2 * step)

    objective = objectives.compose(objectives.explanation_penalty(),
                                   objectives.site_explanation_penalty(SITE, BASIS))
    for index, name in enumerate(["explanation", "site_explanation"]):
      grads = jax.grad(lambda p, name=name: _loss(objective, p, batch, model=TANH_MODEL)[1][f"loss/{name}"])(
          params)
      directional = sum(np.sum(np.asarray(g, np.float64) * d) for g, d in
                        zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(direction)))
      np.testing.assert_allclose(directional, expected[index], rtol=2e-3)
      self.assertGreater(abs(expected[index]), 1e-3)

  def test_integer_inputs_fail_loudly(self):
    def forward(params, inputs):
      return jnp.zeros((inputs.shape[0], 3)), {}
    with self.assertRaisesRegex(landscape.BadInputError, "floating inputs.*int32"):
      objectives.input_gradients(forward, {}, jnp.zeros((2, 4), jnp.int32))


class HyperparameterTest(absltest.TestCase):

  def test_weight_is_read_from_each_runs_hparams(self):
    weight = objectives.hyperparameter("lam", scale=10.0)
    hparams = {"lam": jnp.asarray(0.3)}
    np.testing.assert_allclose(objectives.value_at(weight, jnp.asarray(5), hparams), 3.0, rtol=1e-6)
    with self.assertRaisesRegex(landscape.BadInputError, r"'lam' is not among this run's hyper-parameters \['mu'\]"):
      objectives.value_at(weight, jnp.asarray(0), {"mu": jnp.asarray(1.0)})


class SteeringTest(absltest.TestCase):

  def test_per_example_vectors_follow_each_examples_class(self):
    params, batch = _params(), _batch()
    num_classes = 3
    concept = np.arange(len(batch["labels"])) % num_classes
    batch = dict(batch, concept=jnp.asarray(concept, jnp.int32))
    width = STEERING_VECTOR.shape[0]
    vectors = np.random.default_rng(7).normal(size=(num_classes, width)).astype(np.float32)
    objective = objectives.compose(objectives.preventative_steering(
        SITE, vectors, objectives.hyperparameter("alpha", scale=2.0), concept_key="concept"))
    run = _run_view(hparams={"alpha": jnp.asarray(0.5)})
    unsteered = _numpy_hidden(params, batch["inputs"])
    steered = objective.training_interventions(run, batch)[SITE](
        jnp.asarray(unsteered, jnp.float32))
    np.testing.assert_allclose(steered, unsteered + 1.0 * vectors[concept], atol=1e-5)
    with self.assertRaisesRegex(ValueError, r"\(C, D\) vectors, one per class"):
      objectives.preventative_steering(SITE, vectors[0], concept_key="concept")

  def test_adds_alpha_times_vector_on_schedule(self):
    params, batch = _params(), _batch()
    schedule = optax.linear_schedule(0.0, 3.0, 10)
    objective = objectives.compose(objectives.preventative_steering(SITE, STEERING_VECTOR, schedule))
    unsteered = _numpy_hidden(params, batch["inputs"])
    unit = STEERING_VECTOR.astype(np.float64) / np.linalg.norm(STEERING_VECTOR)
    for step in (0, 4, 20):
      alpha = float(schedule(step))
      act = jnp.asarray(unsteered, jnp.float32)
      steered = objective.training_interventions(_run_view(step), batch)[SITE](act)
      np.testing.assert_allclose(steered, unsteered + alpha * STEERING_VECTOR, atol=1e-5)
      _, metrics = _loss(objective, params, batch, step=step)
      self.assertEqual(float(metrics["loss/steering"]), 0.0)
      np.testing.assert_allclose(metrics["steering/alpha"], alpha, rtol=1e-6)
      np.testing.assert_allclose(metrics["steering/projection"], np.mean(unsteered @ unit), atol=1e-4)
      expected_logits = _numpy_logits(params, unsteered + alpha * STEERING_VECTOR)
      np.testing.assert_allclose(
          _numpy_cross_entropy(expected_logits, np.asarray(batch["labels"])),
          _loss(objectives.compose(objectives.cross_entropy(), *objective.terms), params, batch,
                step=step)[1]["loss/task"], rtol=1e-5)


class ObserverTest(parameterized.TestCase):

  @parameterized.named_parameters(("primal", 12, 5), ("dual", 8, 20))
  def test_ridge_fit_minimises_the_readout_loss(self, num_examples, num_features):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(num_examples, num_features))
    y = rng.normal(size=(num_examples, 3))
    ridge = 0.05
    kernel, bias = jax.jit(objectives.ridge_fit, static_argnums=2)(jnp.asarray(x, jnp.float32),
                                                                     jnp.asarray(y, jnp.float32), ridge)
    # Normal equations of mean((x W + b - y)^2) + ridge ||W||^2 / R, with the bias as a free column.
    design = np.concatenate([x, np.ones((num_examples, 1))], axis=1)
    penalty = num_examples * ridge * np.diag(np.r_[np.ones(num_features), 0.0])
    solution = np.linalg.solve(design.T @ design + penalty, design.T @ y)
    np.testing.assert_allclose(kernel, solution[:-1], atol=2e-4)
    np.testing.assert_allclose(bias, solution[-1], atol=2e-4)

  def test_closed_form_gradient_equals_gradient_through_the_solve(self):
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(10, 6)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(10, 3)), jnp.float32)

    def value(x, hold):
      fit = objectives.ridge_fit(x, y, 0.1)
      kernel, bias = jax.lax.stop_gradient(fit) if hold else fit
      return objectives.readout_loss(x, y, kernel, bias, 0.1)[0]

    held = jax.grad(value)(x, True)
    through = jax.grad(value)(x, False)
    np.testing.assert_allclose(held, through, atol=1e-5)
    self.assertGreater(np.abs(held).max(), 1e-3)

  def test_trainable_readout_value_and_state_gradient(self):
    params, batch = _params(), _batch()
    term = objectives.observer_readout(SITE, width=HIDDEN, num_responses=NUM_RESPONSES, ridge=0.01,
                                       weight=2.0)
    objective = objectives.compose(term)
    rng = np.random.default_rng(6)
    readout = {"kernel": jnp.asarray(rng.normal(size=(HIDDEN, NUM_RESPONSES)), jnp.float32) * 0.1,
               "bias": jnp.asarray(rng.normal(size=NUM_RESPONSES), jnp.float32)}
    states, _ = objective.init(jax.random.PRNGKey(0), params)
    states["readout"] = readout
    grads, metrics = jax.grad(lambda s: _loss(objective, params, batch, term_states=s),
                              has_aux=True)(states)
    hidden = _numpy_hidden(params, batch["inputs"])
    kernel, bias = np.asarray(readout["kernel"], np.float64), np.asarray(readout["bias"], np.float64)
    error = hidden @ kernel + bias - np.asarray(batch["responses"], np.float64)
    mse = np.mean(error ** 2)
    np.testing.assert_allclose(metrics["loss/readout"], mse + 0.01 * np.sum(kernel ** 2) / NUM_RESPONSES,
                               rtol=1e-5)
    np.testing.assert_allclose(metrics["readout/mse"], mse, rtol=1e-5)
    # The state's gradient is the unweighted one (weight 2.0 does not appear).
    expected_kernel = 2 * hidden.T @ error / error.size + 2 * 0.01 * kernel / NUM_RESPONSES
    np.testing.assert_allclose(grads["readout"]["kernel"], expected_kernel, atol=1e-5)
    np.testing.assert_allclose(grads["readout"]["bias"], 2 * error.sum(0) / error.size, atol=1e-5)

  def test_rsa_matches_numpy(self):
    params, batch = _params(), _batch()
    _, metrics = _loss(objectives.compose(objectives.rsa_alignment(SITE)), params, batch)
    hidden = _numpy_hidden(params, batch["inputs"])
    upper = np.triu_indices(len(hidden), k=1)
    model_rdm = (1 - np.corrcoef(hidden))[upper]
    target_rdm = (1 - np.corrcoef(np.asarray(batch["responses"], np.float64)))[upper]
    expected = 1 - np.corrcoef(model_rdm, target_rdm)[0, 1]
    np.testing.assert_allclose(metrics["loss/rsa"], expected, rtol=1e-4)
    np.testing.assert_allclose(metrics["rsa/correlation"], 1 - expected, rtol=1e-4)

  def test_cka_matches_numpy_feature_space_formula(self):
    params, batch = _params(), _batch()
    _, metrics = _loss(objectives.compose(objectives.cka_alignment(SITE)), params, batch)
    x = _numpy_hidden(params, batch["inputs"])
    y = np.asarray(batch["responses"], np.float64)
    x, y = x - x.mean(0), y - y.mean(0)
    cka = np.sum((y.T @ x) ** 2) / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))
    np.testing.assert_allclose(metrics["loss/cka"], 1 - cka, rtol=1e-4)
    rotation, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(NUM_RESPONSES, NUM_RESPONSES)))
    rotated = objectives.linear_cka(jnp.asarray(x, jnp.float32), jnp.asarray(3.0 * y @ rotation, jnp.float32))
    np.testing.assert_allclose(rotated, cka, rtol=1e-4)


class CounterfactualTest(parameterized.TestCase):

  @parameterized.parameters("kl", "mse")
  def test_matches_numpy(self, divergence):
    params, batch = _params(), _batch()
    term = objectives.counterfactual_consistency(SITE, BASIS, divergence=divergence)
    _, metrics = _loss(objectives.compose(term), params, batch)
    hidden = _numpy_hidden(params, batch["inputs"])
    rows = np.asarray(BASIS.vectors, np.float64)
    coords = hidden @ rows.T
    swapped = hidden + (np.roll(coords, 1, axis=0) - coords) @ rows
    original, counterfactual = _numpy_logits(params, hidden), _numpy_logits(params, swapped)
    if divergence == "kl":
      expected = np.mean(np.sum(_softmax(original) * (_log_softmax(original) - _log_softmax(counterfactual)),
                                -1))
    else:
      expected = np.mean((original - counterfactual) ** 2)
    np.testing.assert_allclose(metrics["loss/counterfactual"], expected, rtol=1e-4)
    np.testing.assert_allclose(metrics["counterfactual/flip_rate"],
                               np.mean(original.argmax(-1) != counterfactual.argmax(-1)))

  def test_gradient_flows_through_the_counterfactual_branch_only(self):
    params, batch = _params(), _batch()
    objective = objectives.compose(objectives.counterfactual_consistency(SITE, BASIS))
    grads = jax.grad(lambda p: _loss(objective, p, batch)[0])(params)
    hidden = _numpy_hidden(params, batch["inputs"])
    rows = np.asarray(BASIS.vectors, np.float64)
    coords = hidden @ rows.T
    swapped = hidden + (np.roll(coords, 1, axis=0) - coords) @ rows
    p, q = _softmax(_numpy_logits(params, hidden)), _softmax(_numpy_logits(params, swapped))
    # d KL(p || softmax(z')) / d b_out with p held fixed is mean_n (q_n - p_n).
    np.testing.assert_allclose(grads["output"]["bias"], np.mean(q - p, axis=0), atol=1e-6)
    np.testing.assert_allclose(grads["output"]["kernel"], swapped.T @ (q - p) / len(p), atol=1e-6)

  @parameterized.parameters("roll", "random")
  def test_direction_the_readout_ignores_costs_nothing(self, permutation):
    params, batch = _params(), _batch()
    term = objectives.counterfactual_consistency(SITE, BASIS, permutation=permutation)
    _, read = _loss(objectives.compose(term), params, batch)
    rows = np.asarray(BASIS.vectors)
    params["output"]["kernel"] = params["output"]["kernel"] - rows.T @ (rows @ params["output"]["kernel"])
    _, ignored = _loss(objectives.compose(term), params, batch)
    self.assertGreater(float(read["loss/counterfactual"]), 1e-4)
    self.assertLess(float(ignored["loss/counterfactual"]), 1e-6)


class SequenceSiteTest(absltest.TestCase):

  def test_every_site_term_on_a_sequence_model(self):
    model = models.gpt(models.GPTConfig(vocab_size=11, max_len=6, d_model=16, num_layers=1, num_heads=1))
    site = "blocks.0.resid_post"
    basis = make_basis(np.random.default_rng(0).normal(size=(2, 16)), site=site)
    rng = np.random.default_rng(1)
    batch = {"inputs": jnp.asarray(rng.integers(0, 11, (5, 6)), jnp.int32),
             "labels": jnp.asarray(rng.integers(0, 11, (5, 6)), jnp.int32),
             "concept": jnp.asarray(rng.integers(0, 2, 5), jnp.int32),
             "responses": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
    objective = objectives.compose(
        objectives.cross_entropy(), objectives.concept_penalty(site, basis),
        objectives.site_explanation_penalty(site, basis), objectives.counterfactual_consistency(site, basis),
        objectives.preventative_steering("embed", np.ones(16, np.float32), 0.5),
        objectives.adversarial_probe(site, width=16, inputs_key=None, concept_key="concept"),
        objectives.observer_readout(site, width=6 * 16, num_responses=3),
        objectives.rsa_alignment(site), objectives.cka_alignment(site))
    params = model.init(jax.random.PRNGKey(0))
    grads, metrics = jax.grad(lambda p: _loss(objective, p, batch, model=model), has_aux=True)(params)
    self.assertTrue(all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree_util.tree_leaves(grads)))
    self.assertTrue(all(np.isfinite(float(value)) for value in metrics.values()))
    steered = {"embed": interventions.steer(np.ones(16, np.float32), 0.5)}
    _, acts = model.forward(params, batch["inputs"], interventions=steered, capture=[site])
    coords = np.asarray(acts[site], np.float64) @ np.asarray(basis.vectors, np.float64).T
    np.testing.assert_allclose(metrics["loss/concept_penalty"], np.mean(np.sum(coords ** 2, -1)), rtol=1e-5)


# --- Composition and the training loop ----------------------------------------------------------

class CompositionTest(absltest.TestCase):

  def test_total_is_the_weighted_sum_of_the_terms(self):
    params, batch = _params(), _batch()
    objective = objectives.compose(objectives.cross_entropy(), *_every_term())
    total, metrics = _loss(objective, params, batch, step=2)
    names = [t.name for t in objective.terms]
    weighted = sum(float(metrics[f"weight/{n}"]) * float(metrics[f"loss/{n}"]) for n in names)
    np.testing.assert_allclose(total, weighted, rtol=1e-5)
    np.testing.assert_allclose(metrics["weight/adversary"], 0.5)
    self.assertTrue(all(float(metrics[f"loss/{n}"]) > 0 for n in names if n != "steering"))

  def test_non_finite_term_stops_training_with_its_name(self):
    class GoesBad:
      name = "refit"

      def init(self, key, params):
        del key, params
        return BASIS

      def update(self, value, *, params, step, key, run):
        del params, key, run
        return value.replace(vectors=jnp.where(step >= 4, jnp.nan, value.vectors))

    term = objectives.concept_penalty(SITE, basis_key="refit", name="concept")
    with self.assertRaisesRegex(training.NonFiniteLossError,
                                r"step 4 \(the update logged as step 5\): term\(s\) "
                                r"\['concept'\].*no checkpoint had been written yet"):
      _train(_config(steps=9), term, refreshers=[GoesBad()])


class LoggedRunTest(absltest.TestCase):
  """One training.train run, logged at every step, with a scheduled weight and a steering schedule."""

  WEIGHT = staticmethod(optax.linear_schedule(0.0, 1.0, 5))
  ALPHA = staticmethod(optax.piecewise_constant_schedule(0.5, {3: 4.0}))
  VECTOR = STEERING_VECTOR * 4.0

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    terms = [objectives.concept_penalty(SITE, BASIS, weight=cls.WEIGHT, name="concept"),
             objectives.preventative_steering(SITE, cls.VECTOR, cls.ALPHA)]
    cls.result, workdir = _train(_config(steps=6, log_every=1), *terms)
    cls.rows = [row for row in training.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
                if "loss" in row]

  def test_scheduled_values_at_every_logged_step_and_total_is_weighted_sum(self):
    self.assertEqual([row["step"] for row in self.rows], list(range(1, 7)))
    for row in self.rows:
      step = row["step"] - 1  # the row at step s reports the update made from step s - 1
      self.assertAlmostEqual(row["weight/concept"], float(self.WEIGHT(step)), places=6)
      self.assertAlmostEqual(row["steering/alpha"], float(self.ALPHA(step)), places=6)
      total = sum(row[f"weight/{name}"] * row[f"loss/{name}"] for name in ("task", "concept", "steering"))
      self.assertAlmostEqual(row["loss"], total, places=5)
    self.assertEqual(len({row["weight/concept"] for row in self.rows}), 6)

  def test_steering_is_off_in_evaluation(self):
    params = jax.tree_util.tree_map(lambda leaf: leaf[0], training.fetch(self.result.state.params))
    ood = DATASET.eval_sets["ood"]
    plain, _ = MODEL.forward(params, jnp.asarray(ood["inputs"]))
    steered, _ = MODEL.forward(params, jnp.asarray(ood["inputs"]),
                               interventions={SITE: interventions.steer(self.VECTOR, 2.0)})
    accuracy = lambda logits: np.mean(np.argmax(np.asarray(logits), -1) == ood["labels"])
    # The loop evaluates sharded over 8 devices in padded chunks: equal up to near-tied examples.
    rounding.assert_accuracy_within_rounding(self, self.result.summary["eval/ood/accuracy"][0], plain,
                                             ood["labels"])
    self.assertNotAlmostEqual(accuracy(plain), accuracy(steered), places=2)


class OneSignatureTest(absltest.TestCase):

  def test_objective_and_term_interventions_take_the_run_and_the_batch(self):
    params, batch = _params(), _batch()
    selected = (np.arange(len(batch["labels"])) % 2).astype(np.float32)
    batch = dict(batch, selected=jnp.asarray(selected))
    shift = np.random.default_rng(9).normal(size=HIDDEN).astype(np.float32)

    def scale_by_gain(run, batch):  # the objective's: reads the run's hyper-parameter
      del batch
      return {SITE: lambda act: act * run.hparams["gain"]}

    def shift_selected(run, batch):  # the term's: reads its own state and a batch field
      shift_D = run.term_states["shift"]
      return {SITE: lambda act: act + batch["selected"][:, None] * shift_D[None, :]}

    shift_term = objectives.Term(name="shift", fn=lambda inputs: jnp.zeros((), jnp.float32),
                                 init=lambda key, params: jnp.asarray(shift),
                                 interventions=shift_selected)
    objective = objectives.compose(objectives.cross_entropy(), shift_term,
                                   interventions=scale_by_gain)
    _, metrics = _loss(objective, params, batch, hparams={"gain": jnp.asarray(0.5, jnp.float32)})
    # The objective's intervention runs first, then the term's.
    hidden = 0.5 * _numpy_hidden(params, batch["inputs"]) + selected[:, None] * shift
    expected = _numpy_cross_entropy(_numpy_logits(params, hidden), np.asarray(batch["labels"]))
    np.testing.assert_allclose(metrics["loss/task"], expected, rtol=1e-5)


class InterventionSignatureTest(absltest.TestCase):

  def test_wrong_signature_is_refused_when_the_objective_is_built(self):
    expected = r"has signature \(run\); expected \(run, batch\) -> \{site: intervention\}"
    with self.assertRaisesRegex(landscape.BadInputError, r"objective: interventions .*" + expected):
      objectives.compose(objectives.cross_entropy(), interventions=lambda run: {})
    with self.assertRaisesRegex(landscape.BadInputError, r"term 'shift': interventions .*" + expected):
      objectives.Term(name="shift", fn=lambda inputs: 0.0, interventions=lambda run: {})
    with self.assertRaisesRegex(landscape.BadInputError, r"objective: interventions is a dict"):
      objectives.compose(objectives.cross_entropy(),
                         interventions={SITE: interventions.steer(STEERING_VECTOR, 1.0)})

  def test_result_that_is_not_a_mapping_is_named(self):
    objective = objectives.compose(
        objectives.cross_entropy(),
        interventions=lambda run, batch: interventions.steer(STEERING_VECTOR, 1.0))
    with self.assertRaisesRegex(landscape.BadInputError,
                                r"objective: interventions returned a Steer .*expected a mapping"):
      _loss(objective, _params(), _batch())

  def test_site_intervention_with_the_wrong_signature_names_the_site(self):
    wrong = lambda run, batch: {SITE: lambda act, run: act}
    right = lambda run, batch: {SITE: lambda act: act}
    # Alone, or chained after another intervention at its site (by a term).
    for objective_fn, term_fn in ((wrong, None), (right, wrong)):
      term = objectives.Term(name="other", fn=lambda inputs: 0.0, interventions=term_fn)
      objective = objectives.compose(objectives.cross_entropy(), term, interventions=objective_fn)
      with self.assertRaisesRegex(landscape.BadInputError,
                                  rf"at site '{SITE}' has signature \(act, run\).*act -> act"):
        _loss(objective, _params(), _batch())


def _half_squared_norm(name, site, *, before):
  def fn(inputs):
    return 0.5 * jnp.mean(jnp.sum(inputs.acts[site].astype(jnp.float32) ** 2, axis=-1))
  return objectives.Term(name=name, fn=fn, sites=(site,), sites_before=(site,) if before else ())


class ReadBeforeInterventionsTest(parameterized.TestCase):
  """A term reads its site after the site's interventions by default, before them when it says so."""

  @parameterized.named_parameters(
      ("ablate", lambda batch_size: interventions.ablate(BASIS)),
      # Gradient routing: the unrouted penalty on a routed latent.
      ("route", lambda batch_size: interventions.route_gradients(
          (np.arange(batch_size * HIDDEN).reshape(batch_size, HIDDEN) % 3 > 0).astype(np.float32))),
  )
  def test_value_and_site_gradient_before_and_after(self, make_intervention):
    batch = _batch()
    batch_size = len(batch["inputs"])
    intervention = make_intervention(batch_size)
    params = dict(_params(), offset=jnp.zeros((batch_size, HIDDEN), jnp.float32))
    model = _with_site_offset(MODEL)

    def site_gradient(term):
      objective = objectives.compose(term, interventions=lambda run, batch: {SITE: intervention})
      (_, metrics), grads = jax.value_and_grad(
          lambda p: _loss(objective, p, batch, model=model), has_aux=True)(params)
      return float(metrics[f"loss/{term.name}"]), np.asarray(grads["offset"], np.float64)

    hidden = _numpy_hidden(params, batch["inputs"])
    q = np.asarray(BASIS.vectors, np.float64)
    if isinstance(intervention, interventions.Ablate):
      seen, gradient_map = hidden - (hidden @ q.T) @ q, lambda g: g - (g @ q.T) @ q
    else:
      mask = np.asarray(intervention.mask, np.float64)
      seen, gradient_map = hidden, lambda g: g * mask
    before_value, before_gradient = site_gradient(_half_squared_norm("before", SITE, before=True))
    after_value, after_gradient = site_gradient(_half_squared_norm("after", SITE, before=False))
    # 0.5 mean_b |a_b|^2 has gradient a / B in the activation a it reads.
    np.testing.assert_allclose(before_value, 0.5 * np.mean(np.sum(hidden ** 2, -1)), rtol=1e-5)
    np.testing.assert_allclose(before_gradient, hidden / batch_size, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(after_value, 0.5 * np.mean(np.sum(seen ** 2, -1)), rtol=1e-5)
    np.testing.assert_allclose(after_gradient, gradient_map(seen / batch_size), rtol=1e-5, atol=1e-7)
    self.assertGreater(np.abs(before_gradient - after_gradient).max(), 1e-3)

  def test_one_objective_reads_both_and_the_scanned_gpt_too(self):
    config = models.GPTConfig(vocab_size=11, max_len=6, d_model=16, num_layers=2, num_heads=2,
                              scan_layers=True)
    model = models.gpt(config)
    params = model.init(jax.random.PRNGKey(0))
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 11, size=(4, 6)), jnp.int32)
    site = "blocks.1.resid_pre"
    ablation = interventions.ablate(BASIS)
    objective = objectives.compose(_half_squared_norm("before", site, before=True),
                                   _half_squared_norm("after", site, before=False),
                                   interventions=lambda run, batch: {site: ablation})
    self.assertEqual((objective.sites_before, objective.sites_after), ((site,), (site,)))
    _, metrics = _loss(objective, params, {"inputs": tokens}, model=model)
    _, acts = jax.jit(lambda p: model.forward(p, tokens, capture=[site]))(params)
    plain = np.asarray(acts[site], np.float64)
    q = np.asarray(BASIS.vectors, np.float64)
    ablated = plain - (plain @ q.T) @ q
    self.assertGreater(np.sum(plain ** 2) / np.sum(ablated ** 2), 1.01)  # the two reads differ
    np.testing.assert_allclose(metrics["loss/before"], 0.5 * np.mean(np.sum(plain ** 2, -1)), rtol=1e-5)
    np.testing.assert_allclose(metrics["loss/after"], 0.5 * np.mean(np.sum(ablated ** 2, -1)),
                               rtol=1e-5)

  def test_sites_before_must_be_among_the_sites(self):
    with self.assertRaisesRegex(landscape.BadInputError,
                                r"term 'penalty': sites_before \['hidden_1'\] are not among its sites"):
      objectives.Term(name="penalty", fn=lambda inputs: 0.0, sites=(SITE,), sites_before=("hidden_1",))
    made = objectives.term("penalty", sites=[SITE], sites_before=[SITE])(lambda inputs: 0.0)
    self.assertEqual(made.sites_before, (SITE,))


class ShardedTrainingTest(parameterized.TestCase):

  @parameterized.named_parameters(
      # Every term, the second-order explanation penalties and the adversary's probe among them.
      ("every_term_jit", _every_term, {}),
      # Under pmap each device sees a quarter of the batch: only per-example terms agree there.
      ("explanation_pmap", lambda: [objectives.explanation_penalty(weight=10.0),
                                    objectives.site_explanation_penalty(SITE, BASIS, weight=0.1)],
       {"parallelism": "pmap"}),
  )
  def test_eight_devices_two_seeds_match_one_device(self, make_terms, overrides):
    single, _ = _train(_config(num_seeds=2, **{"mesh.num_devices": 1}), *make_terms())
    sharded, _ = _train(_config(num_seeds=2, **{"mesh.num_devices": 8}, **overrides), *make_terms())
    # Not bitwise: eight devices split each batch's float32 matmuls and means differently from one
    # (another summation order, a few ulps per step, compounded over 6 Adam steps of lr 1e-2);
    # 1e-5 on parameters and losses of order 0.1-1 is far above that and far below a real bug.
    chex.assert_trees_all_close(training.fetch(sharded.state.params), training.fetch(single.state.params),
                                atol=1e-5, rtol=0)
    chex.assert_trees_all_close(training.fetch(sharded.state.term_states),
                                training.fetch(single.state.term_states), atol=1e-5, rtol=0)
    for name, value in single.summary.items():
      if name.startswith(("loss", "weight/")):
        np.testing.assert_allclose(sharded.summary[name], value, atol=1e-5, err_msg=name)
    params = training.fetch(single.state.params)["hidden"]["0"]["kernel"]
    self.assertGreater(np.abs(params[0] - params[1]).max(), 1e-3)  # the two seeds differ


if __name__ == "__main__":
  absltest.main()
