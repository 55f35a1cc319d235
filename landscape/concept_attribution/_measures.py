"""What is measured of every arm: the attribution of updates to SAE features, per group and per data
source, the style rate, the SAE features' activation, and the style's decodability at every site.

Attribution (a choice the issue leaves open). An update is attributed by projecting the update
of the matrices that write into the site onto each SAE decoder row (`transforms.attribute` over
the SAE's decoder as a dictionary, ``roles=("writes",)``): for every feature k with decoder row
d_k, ``magnitude_k = ||U d_k||`` over every linked slice U of the update (the change of what the
writers put along d_k, whatever the input), and ``share_k = ||U d_k||^2 / (||U||^2 ||d_k||^2)``.
Each feature is measured on its own row: this is neither a decomposition of the update into a sum
over features nor the SAE's encoder.

* Not least squares: with F > D rows (overcomplete, not orthogonal) the coefficients c with
  U = sum_k c_k d_k are not unique, and the minimum-norm choice spreads an update along one row over
  every row correlated with it, so a feature's number would depend on the whole dictionary.
* Not the encoder: the encoder reads activations through TopK, a nonlinearity whose linearisation
  depends on the input; its first-order code change on a probe batch is the second, signed
  attribution here (`code_change_attribution`, a JVP), logged beside this one.

The row projection is chosen as the main attribution because it needs no probe batch and no extra
forward pass (a Gram matrix per step, O(M D^2 + F D^2)), and because it is what the gains act on:
`scale_along` with gain g on the span of a group's rows multiplies each of the group's U d_k by
exactly g (d_k lies in the span), so "suppress" (g = 0) zeroes precisely the group's attributed
magnitudes; other features' projections change too where their rows overlap the span. It is
unsigned: whether a feature named by it actually strengthens is checked against the feature's
activation over fine-tuning (`rank_correlation`). The TopK SAEs here keep unit-norm decoder rows,
so ranking by magnitude and by share agree.

Group shares. A group's share is the sum of its features' shares. The shares of all F features
sum to ``sum_k ||U d^_k||^2 / ||U||^2``, which is 1 for an orthonormal dictionary and can exceed 1
for an overcomplete one (rows are not orthogonal): the group shares (style + skill + other) sum to
that total, not to 1; ``transform/{site}/total_share`` is the share in the span of all rows.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from landscape import directions
from landscape import sae as sae_lib
from landscape import training
from landscape import transforms
from landscape.concept_attribution._setting import GROUPS
from landscape.concept_attribution._setting import Setting
from landscape.concept_attribution._setting import site_codes
from landscape.data import _pirate_arithmetic as pirate
from landscape.sites import BadInputError

LIVE_SAE = "sae"        # the live SAE refresher's name
LIVE_SPAN = "span"      # its span refresher's name, and the extra arg of the span basis
ROWS_ARG = "sae_rows"   # the extra arg through which attribute reads the live SAE's rows
SOURCES = ("mix", "style_only", "skill_only")


def attribution_directions(setting: Setting, *, extra_arg: str | None = None
                           ) -> transforms.Directions:
  """Every feature of the SAE, as a dictionary at the site, over the links that write into it."""
  return sae_lib.feature_directions(setting.sae, setting.model.site_links, site=setting.site,
                                    roles=("writes",), extra_arg=extra_arg)


class CodeChangeState(NamedTuple):
  """State of `code_change_attribution`: ``metrics`` name -> float32 array."""

  metrics: dict[str, jax.Array]


def code_change_attribution(setting: Setting, probe_inputs: Any
                            ) -> optax.GradientTransformationExtraArgs:
  """A second, signed attribution (not the main one; see the module docstring): the first-order
  change of each SAE feature's code on fixed probe inputs that the update makes.

  With a(theta) the site's activation on ``probe_inputs`` and the update u (the transform's input,
  passed through unchanged), ``delta_a = J_theta a . u`` (one `jax.jvp`); the code change of
  feature k is the mean over probe tokens of ``1[code_k > 0] <delta_a, W_enc[:, k]>`` (the SAE's
  encoder linearised where the feature is active). Metrics: ``f"{site}/code_change"`` (F,) and
  ``f"{site}/activation_change"`` (), the RMS of delta_a over tokens. Costs one forward pass with
  its tangent on the probe batch per step.
  """
  model, site, sae = setting.model, setting.site, setting.sae
  inputs = jnp.asarray(probe_inputs)
  encoder = jnp.asarray(sae.W_enc, jnp.float32)

  def site_activation(params):
    _, acts = model.forward(params, inputs, capture=[site])
    return acts[site].astype(jnp.float32)

  def zeros():
    return {f"{site}/code_change": jnp.zeros((sae.d_sae,), jnp.float32),
            f"{site}/activation_change": jnp.zeros((), jnp.float32)}

  def init_fn(params):
    del params
    return CodeChangeState(metrics=zeros())

  def update_fn(updates, state, params=None, **extra_args):
    del state, extra_args
    if params is None:
      raise BadInputError("code_change_attribution: params=None; give the params the update "
                          "starts from (optax's update(updates, state, params))")
    tangent = jax.tree_util.tree_map(lambda u, p: u.astype(p.dtype), updates, params)
    activation, change = jax.jvp(site_activation, (params,), (tangent,))
    active = (sae.encode(activation) > 0).astype(jnp.float32)
    code_change = jnp.mean(active * jnp.einsum("...d,df->...f", change, encoder,
                                               precision=jax.lax.Precision.HIGHEST),
                           axis=tuple(range(change.ndim - 1)))
    metrics = {f"{site}/code_change": code_change,
               f"{site}/activation_change": jnp.sqrt(jnp.mean(jnp.sum(jnp.square(change), -1)))}
    return updates, CodeChangeState(metrics=metrics)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def group_shares(share_F: np.ndarray, masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """group -> the sum of its features' shares, over the last axis (see the module docstring)."""
  share = np.asarray(share_F, np.float64)
  return {group: share[..., mask].sum(axis=-1) for group, mask in masks.items()}


def sequence_log_probability(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  """(B,) the summed log-probability of ``labels`` where ``mask``; float32."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
  return jnp.sum(picked * mask, axis=-1)


def style_evaluator(setting: Setting, config: ml_collections.ConfigDict):
  """``(params, run) -> {"style/rate", "style/margin"}`` (S,): on held-out prompts (a correct sum,
  ``a + b = c``), the fraction whose styled continuation (ARR and the pirate words) the model finds
  more probable than the plain one (the same words, plain), and the mean log-probability margin
  per scored token."""
  world = setting.world
  content = pirate.sample_content(world, jax.random.PRNGKey(config.probe_seed + 1),
                                  config.eval_size, arithmetic_rate=1.0, correct_rate=1.0)
  plain = pirate.as_batch(world, content, False)
  styled = pirate.as_batch(world, content, True)
  scored = (jnp.arange(world.seq_len) >= pirate.SEPARATOR_INDEX - 1).astype(jnp.float32)
  model = setting.model

  def one(params):
    def log_probability(batch):
      logits, _ = model.forward(params, batch["inputs"])
      return sequence_log_probability(logits, batch["labels"], scored[None, :])
    margin = log_probability(styled) - log_probability(plain)
    return {"style/rate": jnp.mean((margin > 0).astype(jnp.float32)),
            "style/margin": jnp.mean(margin) / jnp.sum(scored)}

  compiled = jax.jit(jax.vmap(one), compiler_options=training.compiler_options())
  return lambda params, run: run_by_run(compiled, params)


def run_by_run(compiled: Callable[..., Any], *stacked: Any) -> Any:
  """``compiled`` (jitted, vmapped over a leading run axis) applied to one run at a time, its
  outputs concatenated over runs: it is compiled for one run whatever a job's number of runs, so
  jobs of every size share its program (the numbers are those of one vmapped call over all runs,
  up to float32 rounding)."""
  host = jax.tree_util.tree_map(np.asarray, stacked)
  num_runs = jax.tree_util.tree_leaves(host)[0].shape[0]
  outputs = [compiled(*jax.tree_util.tree_map(lambda leaf: leaf[index:index + 1], host))
             for index in range(num_runs)]
  return jax.tree_util.tree_map(lambda *values: np.concatenate([np.asarray(value)
                                                                for value in values]), *outputs)


def _cross_entropy(model, params, batch):
  logits, _ = model.forward(params, batch["inputs"])
  mask = batch["label_mask"]
  return -jnp.sum(sequence_log_probability(logits, batch["labels"], mask)) / jnp.sum(mask)


def source_batches(setting: Setting, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Fixed batches of each data source: the fine-tuning mix, style alone (styled text whose sums
  are wrong: no skill to learn) and the skill alone (correct sums, plain)."""
  world, size = setting.world, config.source_batch_size
  key = jax.random.PRNGKey(config.probe_seed + 2)
  keys = jax.random.split(key, 3)
  rates = config.finetune
  tasks = {
      "mix": data_task(world, rates.arithmetic_rate, 1.0, rates.style_rate, rates.answer_weight),
      "style_only": data_task(world, rates.arithmetic_rate, 0.0, 1.0, rates.answer_weight),
      "skill_only": data_task(world, rates.arithmetic_rate, 1.0, 0.0, rates.answer_weight)}
  return {name: tasks[name](keys[index], size) for index, name in enumerate(SOURCES)}


def data_task(world, arithmetic_rate, correct_rate, style_rate, answer_weight):
  return pirate.pirate_arithmetic_task(world, arithmetic_rate=arithmetic_rate,
                                       correct_rate=correct_rate, style_rate=style_rate,
                                       answer_weight=answer_weight)


def source_attribution(setting: Setting, config: ml_collections.ConfigDict):
  """``(stacked params, stacked rows (S, F, D)) -> {"source/{source}/{group}"}`` (S,), jitted: the
  group shares of the gradient each data source's fixed batch gives at the current parameters (a
  gradient, not an Adam update: the update of one source alone has no moment history of its
  own), along the rows given (the base SAE's decoder, or a live SAE's current one)."""
  model, site = setting.model, setting.site
  tx = transforms.attribute(attribution_directions(setting), rows_arg=ROWS_ARG)
  masks = {group: jnp.asarray(mask) for group, mask in
           setting.groups.masks(setting.sae.d_sae).items() if group in GROUPS}
  batches = source_batches(setting, config)

  def one(params, rows):
    metrics = {}
    for source, batch in batches.items():
      grads = jax.grad(lambda p, batch=batch: _cross_entropy(model, p, batch))(params)
      _, state = tx.update(grads, tx.init(params), **{ROWS_ARG: {site: rows}})
      share = state.metrics[f"{site}/share"]
      for group, mask in masks.items():
        metrics[f"source/{source}/{group}"] = jnp.sum(jnp.where(mask, share, 0.0))
    return metrics

  return jax.jit(jax.vmap(one), compiler_options=training.compiler_options())


def source_evaluator(setting: Setting, compiled, *, live: bool):
  """`source_attribution` as an evaluator ``(params, run) -> metrics``; with ``live`` along the
  live SAE's current decoder, else the base SAE's."""
  fixed_rows = jnp.asarray(setting.sae.W_dec, jnp.float32)

  def evaluate(params, run):
    if live:
      return run_by_run(compiled, params, run.refreshed[LIVE_SAE].sae.W_dec)
    return run_by_run(lambda params: compiled(params, fixed_rows[None]), params)

  return evaluate


def feature_evaluator(setting: Setting):
  """``(params, run) -> {"features/mean_code"}`` (S, F): the base SAE's mean code of every feature
  on the fine-tuning probe set, at the current parameters."""
  inputs = jnp.asarray(setting.probes.finetune["inputs"])
  model, site, sae = setting.model, setting.site, setting.sae
  compiled = jax.jit(jax.vmap(lambda params: jnp.mean(site_codes(sae, model, params, inputs, site),
                                                      axis=0)),
                     compiler_options=training.compiler_options())
  return lambda params, run: {"features/mean_code": run_by_run(compiled, params)}


def style_decodability(setting: Setting, config: ml_collections.ConfigDict):
  """A linear probe's measurement of the style (plain or pirate) at every site, at the last
  position (`directions.make_decodability`): compiled once, shared by every arm."""
  probes = setting.probes
  batch = {"inputs": np.concatenate([probes.style_plain["inputs"],
                                     probes.style_pirate["inputs"]]),
           "style": np.concatenate([probes.style_plain["style"],
                                    probes.style_pirate["style"]])}
  return directions.make_decodability(
      setting.model, batch, field="style", sites=setting.model.site_names, position=-1,
      heldout_fraction=0.5, l2=1e-2, steps=config.decodability_steps,
      compiler_options=training.compiler_options())


def decodability_evaluator(measure, final_step: int):
  """At the last step only: ``decodability/{site}`` (S,), the held-out accuracy of `measure`."""

  def evaluate(params, run):
    if int(np.asarray(run.step).reshape(-1)[0]) != final_step:
      return {}
    result = measure(params)
    return {f"decodability/{site}": result.heldout_accuracy[:, index]
            for index, site in enumerate(result.sites)}

  return evaluate


@dataclasses.dataclass(frozen=True)
class Evaluators:
  """The measurements every job's evaluations run, built once and compiled for one run (see
  `run_by_run`; the decodability probes are run by run too), so that every job shares them."""

  style: Callable[..., Any]
  sources: Callable[..., Any]
  features: Callable[..., Any]
  decodability: Any

  def for_arm(self, setting: Setting, *, live: bool, final_step: int) -> list[Callable[..., Any]]:
    evaluators = [self.style, source_evaluator(setting, self.sources, live=live), self.features]
    if self.decodability is not None:
      evaluators.append(decodability_evaluator(self.decodability, final_step))
    return evaluators


def make_evaluators(setting: Setting, config: ml_collections.ConfigDict) -> Evaluators:
  return Evaluators(style=style_evaluator(setting, config),
                    sources=source_attribution(setting, config),
                    features=feature_evaluator(setting),
                    decodability=(style_decodability(setting, config)
                                  if config.decodability_steps else None))


def attribution_overhead(setting: Setting, config: ml_collections.ConfigDict, *,
                         repeats: int = 100) -> dict[str, float]:
  """Milliseconds per fine-tuning step of one run (loss, gradient, Adam) without attribution, with
  the decoder-row attribution over every feature, and with both attributions; and the ratios. The
  median of ``repeats`` timed steps of each after one compiled warm-up step, the three timed in
  turn (so a change of the machine's load touches all three alike), each step blocked on."""
  model = setting.model
  batch = setting.finetune.sample(setting.finetune.arrays, jax.random.PRNGKey(0),
                                  jnp.zeros((), jnp.int32), config.batch_size)
  params = jax.tree_util.tree_map(jnp.asarray, setting.base_params)
  probe = setting.probes.finetune["inputs"][:config.code_change_examples]
  chains = {
      "without": optax.adam(config.learning_rate),
      "with": optax.chain(optax.adam(config.learning_rate),
                          transforms.attribute(attribution_directions(setting))),
      "with_both": optax.chain(optax.adam(config.learning_rate),
                               transforms.attribute(attribution_directions(setting)),
                               code_change_attribution(setting, probe))}
  compiled, states = {}, {}
  for name, optimizer in chains.items():
    def step(params, state, optimizer=optimizer):
      grads = jax.grad(lambda p: _cross_entropy(model, p, batch))(params)
      updates, state = optimizer.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    compiled[name] = jax.jit(step, compiler_options=training.compiler_options())
    states[name] = optimizer.init(params)
    jax.block_until_ready(compiled[name](params, states[name]))
  times = {name: [] for name in chains}
  for _ in range(repeats):
    for name in chains:
      start = time.perf_counter()
      jax.block_until_ready(compiled[name](params, states[name]))
      times[name].append(time.perf_counter() - start)
  milliseconds = {name: 1000 * float(np.median(values)) for name, values in times.items()}
  return dict(without_ms=milliseconds["without"], with_ms=milliseconds["with"],
              with_both_ms=milliseconds["with_both"],
              ratio=milliseconds["with"] / milliseconds["without"],
              ratio_both=milliseconds["with_both"] / milliseconds["without"])


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
  """Spearman's rank correlation of two (F,) vectors (average ranks for ties); 0 when one is
  constant."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  first, second = np.asarray(first, np.float64), np.asarray(second, np.float64)
  if np.ptp(first) == 0 or np.ptp(second) == 0:
    return 0.0
  return float(stats.spearmanr(first, second).statistic)
