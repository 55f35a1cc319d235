"""What is measured of every arm: the attribution of updates to SAE features, per group and per data
source, the style rate, the SAE features' activation, and the style's decodability at every site.

Which parameters (`_setting.coverage_links`). With ``config.coverage="stream"`` (the default) the
attribution reads every parameter that writes into the residual stream: the token and position
embeddings and every block's ``attention.out`` and ``mlp.out``. The stream is one D-dimensional
space in a pre-LayerNorm GPT, so an SAE decoder row at any residual site is a direction every
writer can write along; the pirate words and ``ARR``, tokens the base model never saw, are learned
mostly in their embeddings, which the writers of one middle site do not include. With
``coverage="site"`` (the first runs') only the writers of the SAE's site are read. Readers are left
out of the attribution (the gains act on them too): a reader's change along d_k is a change in how
the stream is read, not in what is written along the feature, and one norm over both would mix the
two questions. The readers (``attention.qkv``, ``mlp.hidden``, the unembedding) read LayerNorm's
output, in which the stream's direction d_k appears as gamma * (d_k minus its mean) (up to the
per-token scale): the span the gains scale on a reader's input axis is the stream's span, exact
for writers, an approximation for readers (not mapped through gamma and the centring).

Attribution per feature (a choice the issue leaves open). The update of those writers is projected
onto each SAE decoder row (`transforms.attribute` over the SAE's decoder as a dictionary): for
every feature k with decoder row d_k, ``magnitude_k = ||U d_k||`` over every linked slice U of the
update (the change of what the writers put along d_k, whatever the input), and
``share_k = ||U d_k||^2 / (||U||^2 ||d_k||^2)``. Each feature is measured on its own row: this is
neither a decomposition of the update into a sum over features nor the SAE's encoder.

* Not least squares: with F > D rows (overcomplete, not orthogonal) the coefficients c with
  U = sum_k c_k d_k are not unique, and the minimum-norm choice spreads an update along one row over
  every row correlated with it, so a feature's number would depend on the whole dictionary.
* Not the encoder: the encoder reads activations through TopK, a nonlinearity whose linearisation
  depends on the input; its first-order code change on a probe batch is the second, signed
  attribution here (`code_change_attribution`, a JVP), logged beside this one.

The row projection needs no probe batch and no extra forward pass (a Gram matrix per step,
O(M D^2 + F D^2)), and it is what the gains act on: `scale_along` with gain g on the span of a
group's rows multiplies each of the group's U d_k by exactly g (d_k lies in the span). It is
unsigned: whether a feature named by it strengthens is checked against the feature's activation
over fine-tuning (`rank_correlation`). The TopK SAEs keep unit-norm decoder rows, so ranking by
magnitude and by share agree.

Group shares are span shares (`span_share_attribution`): a group's share is the share of the
update's squared norm in the span of its decoder rows, ``||U Q^T||^2 / ||U||^2`` with Q an
orthonormal basis of that span (`transforms.span_basis`'s rule, computed in float64 once). It lies
in [0, 1], and a group of R random rows in D dimensions has about R / D of an isotropic update:
the null level, the mean span share of random groups matched on activation to the style group
(`FeatureGroups.null_groups`), is the level to compare with. Criterion 1's pre-registered
quantity (the first runs': magnitudes over the writers of the SAE's site only) is logged beside
the stream's as ``site_writer_magnitude`` by `span_share_attribution`. (Sums of single-row shares, the
first runs' group shares, count overlapping rows twice and exceed 1 for an overcomplete
dictionary.)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
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
from landscape.concept_attribution._setting import FEATURE_SETS
from landscape.concept_attribution._setting import FeatureSpans
from landscape.concept_attribution._setting import Setting
from landscape.concept_attribution._setting import coverage_links
from landscape.concept_attribution._setting import site_codes
from landscape.data import _pirate_arithmetic as pirate
from landscape.sites import BadInputError
from landscape.sites import path_string

LIVE_SAE = "sae"        # the live SAE refresher's name
LIVE_SHARE_BASES = "share_bases"  # the live span-share bases' refresher, and their extra arg
LIVE_SPAN = "span"      # its span refresher's name, and the extra arg of the span basis
ROWS_ARG = "sae_rows"   # the extra arg through which attribute reads the live SAE's rows
SOURCES = ("mix", "style_only", "skill_only")


def attribution_directions(setting: Setting, *, extra_arg: str | None = None,
                           coverage: str | None = None) -> transforms.Directions:
  """Every feature of the SAE, as a dictionary at the site, over the writers of ``coverage`` (the
  setting's when None; `_setting.coverage_links`)."""
  links = coverage_links(setting.model, setting.site, coverage or setting.coverage, ("writes",))
  return sae_lib.feature_directions(setting.sae, links, site=setting.site, roles=("writes",),
                                    extra_arg=extra_arg)


SPAN_RTOL = 1e-4  # the rank cut of every span basis (`transforms.span_basis`'s default)


def span_basis_float64(rows_RxD: np.ndarray) -> np.ndarray:
  """(R, D) an orthonormal basis of the span of ``rows_RxD``, computed in float64 with
  `transforms.span_basis`'s rule: rows past the span's rank (singular values at or below
  ``SPAN_RTOL`` times the largest) are zero."""
  rows = np.asarray(rows_RxD, np.float64)
  _, singular_values, vt = np.linalg.svd(rows, full_matrices=False)
  keep = singular_values > SPAN_RTOL * singular_values[0]
  return vt * keep[:, None]


def share_groups(setting: Setting) -> np.ndarray:
  """(G + K, R) int: the features of every set of ``FEATURE_SETS`` then of the K null groups, the
  groups whose spans `span_share_attribution` reports."""
  groups = [np.asarray(getattr(setting.groups, name)) for name in FEATURE_SETS]
  return np.concatenate([np.stack(groups), np.asarray(setting.groups.null_groups,
                                                      np.int64).reshape(-1, len(groups[0]))])


def feature_spans(setting: Setting) -> FeatureSpans:
  """The span basis of every set of ``FEATURE_SETS`` (float64 `span_basis_float64`, stored
  float32), stacked."""
  decoder = np.asarray(setting.sae.W_dec, np.float64)
  return FeatureSpans(bases_GxRxD=jnp.asarray(np.stack([
      span_basis_float64(decoder[getattr(setting.groups, name)]) for name in FEATURE_SETS]),
                                              jnp.float32))


def span_share_bases(setting: Setting) -> jax.Array:
  """(G + K, R, D) float32: the span bases of ``FEATURE_SETS`` then of the K null groups
  (`share_groups`), the spans `span_share_attribution` reports."""
  decoder = np.asarray(setting.sae.W_dec, np.float64)
  return jnp.asarray(np.stack([span_basis_float64(decoder[group])
                               for group in share_groups(setting)]), jnp.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class LiveShareBases:
  """A refresher of the training loop: the span bases of `share_groups` along a live SAE's
  current decoder rows, (G + K, R, D), recomputed (`transforms.span_basis`, float32) every
  ``every`` steps from the live SAE refresher ``sae_name`` (listed before it); it starts as the
  base SAE's (`span_share_bases`)."""

  name: str
  sae_name: str
  every: int
  groups_GxR: np.ndarray
  initial: jax.Array

  def init(self, key: jax.Array, params: Any) -> jax.Array:
    del key, params
    return self.initial

  def update(self, value: jax.Array, *, params: Any, step: jax.Array, key: jax.Array,
             run: Any) -> jax.Array:
    del params, key

    def refresh():
      decoder = run.refreshed[self.sae_name].sae.W_dec
      bases = jax.vmap(lambda group: transforms.span_basis(decoder, group, rtol=SPAN_RTOL))(
          jnp.asarray(self.groups_GxR))
      return bases.astype(value.dtype)

    return jax.lax.cond(step % self.every == 0, refresh, lambda: value)


def live_share_bases(setting: Setting, *, every: int) -> LiveShareBases:
  return LiveShareBases(name=LIVE_SHARE_BASES, sae_name=LIVE_SAE, every=every,
                        groups_GxR=share_groups(setting), initial=span_share_bases(setting))


def writer_gram(directions: transforms.Directions, updates: Any, width: int) -> jax.Array:
  """(D, D) float32 U^T U, U stacking ``updates``' vectors along every link of ``directions``
  (one site; each link's axis of width D), HIGHEST precision."""
  leaves = {path_string(keypath): leaf
            for keypath, leaf in jax.tree_util.tree_flatten_with_path(updates)[0]}
  gram = jnp.zeros((width, width), jnp.float32)
  for along in directions.alongs:
    leaf = leaves[along.path]
    piece = leaf if along.index is None else leaf[along.index]
    rows = jnp.moveaxis(piece.astype(jnp.float32), along.axis, -1).reshape(-1, width)
    gram = gram + jnp.einsum("md,me->de", rows, rows, precision=jax.lax.Precision.HIGHEST)
  return gram


def row_magnitudes(gram_DxD: jax.Array, rows_FxD: jax.Array) -> jax.Array:
  """(F,) ||U d_k|| for every row d_k, from the Gram matrix U^T U: sqrt(d_k^T G d_k), clipped at
  0 (a magnitude near 0 reads about sqrt(eps) ||U|| ||d_k||, as `transforms.attribute`'s Gram
  route)."""
  rows = rows_FxD.astype(jnp.float32)
  squared = jnp.einsum("fd,de,fe->f", rows, gram_DxD, rows, precision=jax.lax.Precision.HIGHEST)
  return jnp.sqrt(jnp.clip(squared, 0.0))


def span_shares(directions: transforms.Directions, updates: Any, bases_GxRxD: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
  """((G,) the share of the squared norm of ``updates``' linked vectors in each span, () that
  norm), over every link of ``directions`` (one site): ``||U Q_g^T||^2 / ||U||^2``, U stacking
  the vectors along each link's axis, Q_g the (R, D) orthonormal basis ``bases_GxRxD[g]`` (zero
  rows allowed). Through one D x D Gram matrix in float32, HIGHEST precision: each share errs by
  about eps (float32) absolute. 0 for a zero update."""
  gram = writer_gram(directions, updates, bases_GxRxD.shape[-1])
  norm_squared = jnp.trace(gram)
  in_span = jnp.einsum("grd,de,gre->g", bases_GxRxD.astype(jnp.float32), gram,
                       bases_GxRxD.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
  safe = jnp.where(norm_squared > 0, norm_squared, 1.0)
  shares = jnp.where(norm_squared > 0, jnp.clip(in_span, 0.0) / safe, 0.0)
  return shares, jnp.sqrt(norm_squared)


class SpanShareState(NamedTuple):
  """State of `span_share_attribution`: ``metrics`` name -> float32 array."""

  metrics: dict[str, jax.Array]


def span_share_attribution(setting: Setting, *, bases_arg: str | None = None,
                           rows_arg: str | None = None) -> optax.GradientTransformationExtraArgs:
  """Reports, without changing the update, its span share in each feature set of
  ``FEATURE_SETS`` and in each null group (`span_shares` over the writers of
  `attribution_directions`, spans `span_share_bases`): metric ``f"{site}/span_share"`` (G + K,),
  ``FEATURE_SETS`` first; and ``f"{site}/site_writer_magnitude"`` (F,), ||U d_k|| over the
  writers of the SAE's site only (criterion 1's pre-registered quantity, `row_magnitudes`).

  With ``bases_arg``, the (G + K, R, D) bases arrive each step through that extra arg (a live
  SAE's current spans, `LiveShareBases`); with ``rows_arg``, the decoder rows (site -> (F, D)).

  Raises:
    BadInputError: at update, when ``bases_arg`` or ``rows_arg`` is not among the extra args.
  """
  directions = attribution_directions(setting)
  site_writers = attribution_directions(setting, coverage="site")
  fixed_bases = jnp.asarray(span_share_bases(setting), jnp.float32)
  fixed_rows = jnp.asarray(setting.sae.W_dec, jnp.float32)
  name = f"{setting.site}/span_share"
  magnitude_name = f"{setting.site}/site_writer_magnitude"

  def from_extra_args(extra_args, arg, fixed, what):
    if arg is None:
      return fixed
    if arg not in extra_args:
      raise BadInputError(f"span_share_attribution: extra arg {arg!r} ({what}) not given; got "
                          f"{sorted(extra_args)}")
    value = extra_args[arg]
    return value[setting.site] if isinstance(value, dict) else value

  def init_fn(params):
    directions.check_params(params, what="span_share_attribution: params")
    return SpanShareState(metrics={name: jnp.zeros((fixed_bases.shape[0],), jnp.float32),
                                   magnitude_name: jnp.zeros((fixed_rows.shape[0],),
                                                             jnp.float32)})

  def update_fn(updates, state, params=None, **extra_args):
    del state, params
    bases = from_extra_args(extra_args, bases_arg, fixed_bases, "the span bases")
    rows = from_extra_args(extra_args, rows_arg, fixed_rows, "the decoder rows")
    shares, _ = span_shares(directions, updates, bases)
    gram = writer_gram(site_writers, updates, fixed_rows.shape[-1])
    return updates, SpanShareState(metrics={name: shares,
                                            magnitude_name: row_magnitudes(gram, rows)})

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


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


class SpanShares(NamedTuple):
  """Span shares (each (...,)): every set of ``FEATURE_SETS``, and ``null``, the null level (the
  mean over the null groups)."""

  style: Any
  skill: Any
  random: Any
  by_activation: Any
  null: Any


SHARE_NAMES = SpanShares._fields
assert SHARE_NAMES[:len(FEATURE_SETS)] == FEATURE_SETS


def group_span_shares(span_share: Any) -> SpanShares:
  """The `SpanShares` of the last axis of a logged ``span_share`` (..., G + K); traceable.

  Raises:
    BadInputError: fewer than G + 1 entries (no null group logged).
  """
  share = span_share if isinstance(span_share, jax.Array) else np.asarray(span_share, np.float64)
  if share.shape[-1] <= len(FEATURE_SETS):
    raise BadInputError(f"group_span_shares: span_share of shape {share.shape} holds no null "
                        f"group (expected more than {len(FEATURE_SETS)} entries on its last axis)")
  return SpanShares(*(share[..., index] for index in range(len(FEATURE_SETS))),
                    null=share[..., len(FEATURE_SETS):].mean(axis=-1))


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
  """``(stacked params) -> {"source/{source}/{set}"}`` (S,), jitted: the span share in each
  field of `SpanShares` (`span_shares`, over the writers of
  `attribution_directions`, along the base SAE's spans) of the gradient each data source's fixed
  batch gives at the current parameters (a gradient, not an Adam update: the update of one source
  alone has no moment history of its own)."""
  model = setting.model
  directions = attribution_directions(setting)
  bases = jnp.asarray(span_share_bases(setting), jnp.float32)
  batches = source_batches(setting, config)

  def one(params):
    metrics = {}
    for source, batch in batches.items():
      grads = jax.grad(lambda p, batch=batch: _cross_entropy(model, p, batch))(params)
      shares, _ = span_shares(directions, grads, bases)
      for name, value in group_span_shares(shares)._asdict().items():
        metrics[f"source/{source}/{name}"] = value
    return metrics

  compiled = jax.jit(jax.vmap(one), compiler_options=training.compiler_options())
  return lambda params, run: run_by_run(compiled, params)


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


def decodability_evaluator(measure) -> training.LastAndInterim:
  """At the last evaluation only: ``decodability/{site}`` (S,), the held-out accuracy of
  `measure`."""

  def evaluate(params, run):
    del run
    result = measure(params)
    return {f"decodability/{site}": result.heldout_accuracy[:, index]
            for index, site in enumerate(result.sites)}

  return training.LastAndInterim(last=evaluate)


@dataclasses.dataclass(frozen=True)
class Evaluators:
  """The measurements every job's evaluations run, built once and compiled for one run (see
  `run_by_run`; the decodability probes are run by run too), so that every job shares them."""

  style: Callable[..., Any]
  sources: Callable[..., Any]
  features: Callable[..., Any]
  decodability: Any

  def for_arm(self) -> list[Callable[..., Any] | training.LastAndInterim]:
    evaluators = [self.style, self.sources, self.features]
    if self.decodability is not None:
      evaluators.append(decodability_evaluator(self.decodability))
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
  the decoder-row attribution over every feature and the span shares (`span_share_attribution`,
  as every arm runs them each step), and with the signed code-change attribution too (every arm's
  chain); and the ratios. The
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
                          transforms.attribute(attribution_directions(setting)),
                          span_share_attribution(setting)),
      "with_both": optax.chain(optax.adam(config.learning_rate),
                               transforms.attribute(attribution_directions(setting)),
                               span_share_attribution(setting),
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
