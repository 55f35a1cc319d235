"""Training SAEs: the pure step of one SAE, and of groups of SAEs vmapped in one program.

A group is SAEs of one architecture and shape (a `Recipe`, static) that differ in what can be traced
(`Member`: the seed, the learning rate, k, the sparsity and AuxK coefficients). Every group reads the
same activation batch at every step; each group's SAEs are stacked (`stack_saes`) and its step is
vmapped over them, and all groups step inside one compiled function:

    groups = [SAEGroup("topk", Recipe("topk", d_sae=1024, k=8), members=(Member(seed=0), ...))]
    state = init_train_state(key, groups, source)
    step = make_train_step(groups, source, total_steps=1953)
    state, metrics = jax.jit(step)(state, source.arrays)

`sae_train_step` is one SAE's step (the group's step is its vmap), usable on its own, as the live
SAE does (`live_sae`). The recipes are those of dictionary_learning's TopK, BatchTopK, JumpReLU and
standard trainers, each a field of `Recipe`: encoder initialised as the decoder's transpose; unit-norm
decoder rows with the gradient's parallel component removed; ``b_dec`` from the first batch's
geometric median, mean, or zero; AuxK on latents idle for ``dead_after_tokens``; resampling of dead
latents with their Adam moments reset; k annealing; BatchTopK's inference threshold; Adam with
gradient clipping, linear warm-up and optional linear decay; a linear warm-up of the sparsity
penalty. Input normalisation is shared by the groups (`SAETrainState.input_scale`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from landscape.sae._architectures import ARCHITECTURES
from landscape.sae._architectures import SAE
from landscape.sae._architectures import BatchTopKSAE
from landscape.sae._architectures import TopKSAE
from landscape.sae._architectures import init_sae
from landscape.sae._losses import loss_for
from landscape.sae._metrics import fraction_variance_explained
from landscape.sae._metrics import normalized_mse
from landscape.sae._sources import ActivationSource
from landscape.sae._stacking import stack_saes
from landscape.sae._training import B_DEC_METHODS
from landscape.sae._training import FiringState
from landscape.sae._training import dead_latents
from landscape.sae._training import fold_normalization
from landscape.sae._training import initial_b_dec
from landscape.sae._training import k_annealing
from landscape.sae._training import normalization_scale
from landscape.sae._training import positive_threshold
from landscape.sae._training import remove_parallel_decoder_gradient
from landscape.sae._training import renormalize_decoder
from landscape.sae._training import resample_dead_latents
from landscape.sae._training import update_batchtopk_threshold
from landscape.sae._training import update_firing
from landscape.sites import BadInputError

K_ARCHITECTURES = ("topk", "batchtopk")
# Recipe.compute_dtype: the dtype of the forward and backward passes; parameters, optimizer state
# and the loss's reductions stay float32.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The loss keyword each penalised architecture's sparsity coefficient goes to.
SPARSITY_KEYWORDS = {"standard": "l1_coefficient", "jumprelu": "l0_coefficient"}


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How a group of SAEs is built and trained; every field is static (it shapes the program).

  Attributes:
    architecture: "topk", "batchtopk", "jumprelu" or "standard".
    d_sae: F, the number of latents.
    k: for topk and batchtopk, the largest k of the group's members (with k annealing, the k it
      starts from); the SAEs' static k.
    tied_init: the encoder initialised as the decoder's transpose.
    decoder_norm: the initial decoder rows' norm.
    unit_norm_decoder: decoder rows kept at unit norm after every step, the gradient's component
      along each row removed before the optimizer (`unit_norm_decoder`).
    b_dec_init: "geometric_median", "mean" or "zero": ``b_dec`` from the first batch.
    apply_b_dec_to_input: subtract b_dec before encoding (None: the architecture's default).
    initial_threshold, bandwidth: JumpReLU's starting threshold and kernel width.
    adam_b1, adam_b2, adam_eps: Adam's.
    grad_clip_norm: the global gradient norm is clipped to this (0: no clipping), after the
      parallel component is removed (as dictionary_learning).
    warmup_steps: the learning rate rises linearly from 0 over these steps.
    decay_start: from this step on it falls linearly to 0 at the last step (0: no decay).
    sparsity_warmup_steps: the sparsity coefficient rises linearly from 0 over these steps.
    k_aux: AuxK's latents per example (0: D // 2).
    dead_after_tokens: a latent idle for this many examples counts as dead (for AuxK, resampling
      and the dead fraction logged in training).
    resample_every: every this many steps (not at step 0) the dead latents are resampled from
      the batch (0: never).
    k_anneal_steps: k falls from ``k`` to each member's k over these steps (0: no annealing).
    threshold_beta, threshold_start_step: BatchTopK's threshold is an exponential moving average
      (``beta``) of the smallest kept code, updated from this step on.
    compute_dtype: "float32", or "bfloat16" for mixed precision (as ``torch.autocast`` trains in
      SAELens and dictionary_learning): the SAE and the batch are cast to it for the loss and its
      gradient; parameters, gradients, Adam's moments and the squared errors stay float32.
  """

  architecture: str
  d_sae: int
  k: int | None = None
  tied_init: bool = True
  decoder_norm: float = 1.0
  unit_norm_decoder: bool = True
  b_dec_init: str = "geometric_median"
  apply_b_dec_to_input: bool | None = None
  initial_threshold: float = 0.001
  bandwidth: float = 0.001
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 1e-8
  grad_clip_norm: float = 1.0
  warmup_steps: int = 1000
  decay_start: int = 0
  sparsity_warmup_steps: int = 0
  k_aux: int = 0
  dead_after_tokens: int = 10_000_000
  resample_every: int = 0
  k_anneal_steps: int = 0
  threshold_beta: float = 0.999
  threshold_start_step: int = 1000
  compute_dtype: str = "float32"

  @property
  def uses_k(self) -> bool:
    return self.architecture in K_ARCHITECTURES


@dataclasses.dataclass(frozen=True)
class Member:
  """One SAE of a group: what may differ between the SAEs trained together.

  Attributes:
    seed: its initialisation's seed.
    learning_rate: Adam's peak learning rate.
    k: for topk and batchtopk, its k (<= the recipe's k); None for the recipe's.
    sparsity_coefficient: the L1 (standard) or L0 (jumprelu) penalty's coefficient.
    auxk_coefficient: AuxK's (topk, batchtopk; 0: no AuxK).
  """

  seed: int = 0
  learning_rate: float = 1e-3
  k: int | None = None
  sparsity_coefficient: float = 0.0
  auxk_coefficient: float = 1 / 32


_SHORT_NAMES = dict(learning_rate="lr", k="k", sparsity_coefficient="coef",
                   auxk_coefficient="auxk")


@dataclasses.dataclass(frozen=True)
class SAEGroup:
  """SAEs of one recipe trained together (vmapped): ``name`` for reports, and its members."""

  name: str
  recipe: Recipe
  members: tuple[Member, ...]

  def member_k(self, member: Member) -> int:
    return self.recipe.k if member.k is None else member.k

  def labels(self) -> list[str]:
    """One label per member, naming what differs between them (the seed at least)."""
    differing = [field.name for field in dataclasses.fields(Member)
                 if len({getattr(m, field.name) for m in self.members}) > 1 and field.name != "seed"]
    labels = []
    for member in self.members:
      parts = [f"{_SHORT_NAMES[name]}{getattr(member, name)}" for name in differing]
      parts.append(f"seed{member.seed}")
      labels.append(f"{self.name}/" + "_".join(parts))
    return labels


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Hyperparams:
  """One SAE's traced hyper-parameters (stacked with its group).

  Attributes:
    learning_rate: float32, the peak learning rate.
    sparsity_coefficient: float32.
    auxk_coefficient: float32.
    k_schedule: int32 (A + 1,): k at steps 0..A (A the annealing steps; (1,) without annealing),
      then the last entry; zeros for architectures without k.
  """

  learning_rate: jax.Array
  sparsity_coefficient: jax.Array
  auxk_coefficient: jax.Array
  k_schedule: jax.Array

  def k_at(self, step: jax.Array) -> jax.Array:
    last = self.k_schedule.shape[-1] - 1
    return self.k_schedule[jnp.minimum(jnp.asarray(step, jnp.int32), last)]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SAEState:
  """One SAE in training (or a group's, stacked on a leading axis).

  Attributes:
    sae: the SAE.
    opt_state: its optimizer's state.
    firing: examples since each latent last fired.
    hyper: its hyper-parameters.
  """

  sae: SAE
  opt_state: Any
  firing: FiringState
  hyper: Hyperparams


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SAETrainState:
  """Everything groups of SAEs carry from step to step over one activation stream.

  Attributes:
    step: int32 scalar, the updates applied so far (shared by every SAE).
    groups: group name -> its `SAEState`, stacked over its members.
    stream: the activation source's state (its shuffling buffer).
    stream_key: the key the source draws the stream from (fixed).
    rng: a PRNG key, split at every step (resampling draws).
    input_scale: float32 scalar multiplying every activation before the SAEs see it (1 without
      input normalisation).
  """

  step: jax.Array
  groups: dict[str, SAEState]
  stream: Any
  stream_key: jax.Array
  rng: jax.Array
  input_scale: jax.Array


def check_group(group: SAEGroup, *, error: type[BadInputError] = BadInputError,
                where: str | None = None) -> None:
  """Raises ``error`` naming the field and value of anything in ``group`` that cannot train; the
  field is named ``{where}.{field}`` when ``where`` is given (a config's path to the group)."""
  recipe = group.recipe

  def fail(field, value, why):
    if where is None:
      raise error(f"SAE group {group.name!r}: {field}={value!r} {why}")
    raise error(f"{where}.{field}={value!r} {why}")

  if recipe.architecture not in ARCHITECTURES:
    fail("architecture", recipe.architecture, f"is not one of {sorted(ARCHITECTURES)}")
  if not isinstance(recipe.d_sae, (int, np.integer)) or recipe.d_sae < 1:
    fail("d_sae", recipe.d_sae, "must be an int >= 1")
  if not group.members:
    fail("members", group.members, "must name at least one SAE")
  if recipe.b_dec_init not in B_DEC_METHODS:
    fail("b_dec_init", recipe.b_dec_init, f"is not one of {B_DEC_METHODS}")
  if recipe.compute_dtype not in COMPUTE_DTYPES:
    fail("compute_dtype", recipe.compute_dtype, f"is not one of {tuple(COMPUTE_DTYPES)}")
  for field in ("warmup_steps", "decay_start", "sparsity_warmup_steps", "k_aux", "resample_every",
                "k_anneal_steps", "threshold_start_step", "dead_after_tokens"):
    value = getattr(recipe, field)
    if not isinstance(value, (int, np.integer)) or value < 0:
      fail(field, value, "must be an int >= 0")
  if recipe.k_aux > recipe.d_sae:
    fail("k_aux", recipe.k_aux, f"must be <= d_sae={recipe.d_sae}")
  for field in ("decoder_norm", "bandwidth", "adam_eps"):
    if not getattr(recipe, field) > 0:
      fail(field, getattr(recipe, field), "must be > 0")
  for field in ("adam_b1", "adam_b2", "threshold_beta"):
    if not 0 <= getattr(recipe, field) < 1:
      fail(field, getattr(recipe, field), "must be in [0, 1)")
  if not recipe.grad_clip_norm >= 0:
    fail("grad_clip_norm", recipe.grad_clip_norm, "must be >= 0 (0: no clipping)")
  if recipe.uses_k:
    if not isinstance(recipe.k, (int, np.integer)) or not 1 <= recipe.k <= recipe.d_sae:
      fail("k", recipe.k, f"must be an int in [1, d_sae={recipe.d_sae}]")
  elif recipe.k is not None or recipe.k_anneal_steps:
    fail("k", recipe.k, f"applies to {K_ARCHITECTURES} only")
  for index, member in enumerate(group.members):
    if not member.learning_rate > 0:
      fail(f"members[{index}].learning_rate", member.learning_rate, "must be > 0")
    if not member.sparsity_coefficient >= 0 or not member.auxk_coefficient >= 0:
      fail(f"members[{index}] coefficients",
           (member.sparsity_coefficient, member.auxk_coefficient), "must be >= 0")
    if recipe.uses_k:
      k = group.member_k(member)
      if not isinstance(k, (int, np.integer)) or not 1 <= k <= recipe.k:
        fail(f"members[{index}].k", member.k, f"must be an int in [1, recipe k={recipe.k}]")
    elif member.k is not None:
      fail(f"members[{index}].k", member.k, f"applies to {K_ARCHITECTURES} only")
  seeds = [member.seed for member in group.members]
  if len(set(group.members)) != len(group.members):
    fail("members", seeds, "repeat an SAE (same seed and hyper-parameters)")


def check_groups(groups: Sequence[SAEGroup]) -> None:
  """`check_group` for each, and names distinct and non-empty."""
  names = [group.name for group in groups]
  if not groups:
    raise BadInputError("SAE groups: none given")
  if any(not isinstance(name, str) or not name for name in names) or len(set(names)) != len(names):
    raise BadInputError(f"SAE groups: names {names} must be distinct non-empty strings")
  for group in groups:
    check_group(group)


def learning_rate_factor(recipe: Recipe, total_steps: int):
  """count -> the factor of the peak learning rate at optimizer step ``count`` (0-based):
  ``count / warmup_steps`` during warm-up, then 1, then from ``decay_start`` linearly to 0 at
  ``total_steps`` (dictionary_learning's ``get_lr_schedule``)."""

  def factor(count):
    count = jnp.asarray(count, jnp.float32)
    warmup = (jnp.minimum(count / recipe.warmup_steps, 1.0) if recipe.warmup_steps
              else jnp.ones((), jnp.float32))
    if not recipe.decay_start:
      return warmup
    decay = (total_steps - count) / max(total_steps - recipe.decay_start, 1)
    return jnp.where(count >= recipe.decay_start, jnp.clip(decay, 0.0, 1.0), warmup)

  return factor


def sae_optimizer(recipe: Recipe, learning_rate: jax.Array | float, total_steps: int
                  ) -> optax.GradientTransformationExtraArgs:
  """Adam with the recipe's clipping and schedule, inside `unit_norm_decoder` when the recipe asks;
  a JumpReLU's threshold is kept positive (`positive_threshold`).
  ``learning_rate`` may be traced (an SAE's own, under the group's vmap); the state does not depend
  on it."""
  factor = learning_rate_factor(recipe, total_steps)
  inner = [optax.clip_by_global_norm(recipe.grad_clip_norm)] if recipe.grad_clip_norm else []
  inner += [optax.scale_by_adam(b1=recipe.adam_b1, b2=recipe.adam_b2, eps=recipe.adam_eps),
            optax.scale_by_learning_rate(lambda count: learning_rate * factor(count))]
  if recipe.architecture == "jumprelu":
    inner.append(positive_threshold())
  if recipe.unit_norm_decoder:
    return optax.chain(remove_parallel_decoder_gradient(), *inner, renormalize_decoder())
  return optax.chain(*inner)


def member_hyperparams(group: SAEGroup, member: Member) -> Hyperparams:
  """The traced hyper-parameters of ``member`` of ``group`` (its k schedule built here)."""
  recipe = group.recipe
  if recipe.uses_k and recipe.k_anneal_steps:
    schedule = k_annealing(recipe.k, group.member_k(member), recipe.k_anneal_steps)
    table = schedule(jnp.arange(recipe.k_anneal_steps + 1))
  else:
    table = jnp.full((1,), group.member_k(member) if recipe.uses_k else 0, jnp.int32)
  return Hyperparams(learning_rate=jnp.asarray(member.learning_rate, jnp.float32),
                     sparsity_coefficient=jnp.asarray(member.sparsity_coefficient, jnp.float32),
                     auxk_coefficient=jnp.asarray(member.auxk_coefficient, jnp.float32),
                     k_schedule=jnp.asarray(table, jnp.int32))


def init_sae_state(key: jax.Array, recipe: Recipe, d_in: int, hyper: Hyperparams, *,
                   total_steps: int) -> SAEState:
  """One SAE's starting state: `init_sae` with the recipe's options, its optimizer's state, no
  latent idle yet."""
  options = dict(tied=recipe.tied_init, decoder_norm=recipe.decoder_norm,
                 apply_b_dec_to_input=recipe.apply_b_dec_to_input)
  if recipe.uses_k:
    options["k"] = int(recipe.k)
  if recipe.architecture == "jumprelu":
    options.update(threshold=recipe.initial_threshold, bandwidth=recipe.bandwidth)
  sae = init_sae(key, recipe.architecture, d_in, recipe.d_sae, **options)
  opt_state = sae_optimizer(recipe, 0.0, total_steps).init(sae)
  return SAEState(sae=sae, opt_state=opt_state, firing=FiringState.zeros(recipe.d_sae),
                  hyper=hyper)


def init_group_state(group: SAEGroup, d_in: int, *, total_steps: int) -> SAEState:
  """The group's members' states stacked (member i from PRNGKey(seed_i))."""
  states = [init_sae_state(jax.random.PRNGKey(member.seed), group.recipe, d_in,
                           member_hyperparams(group, member), total_steps=total_steps)
            for member in group.members]
  saes = stack_saes([state.sae for state in states])
  rest = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves),
                                *[(state.opt_state, state.firing, state.hyper) for state in states])
  return SAEState(sae=saes, opt_state=rest[0], firing=rest[1], hyper=rest[2])


def _loss_options(recipe: Recipe, hyper: Hyperparams, firing: FiringState, step: jax.Array
                  ) -> dict[str, Any]:
  if recipe.uses_k:
    dead = dead_latents(firing, recipe.dead_after_tokens)
    return dict(k=hyper.k_at(step), dead=dead, k_aux=recipe.k_aux or None,
                auxk_coefficient=hyper.auxk_coefficient)
  warmup = (jnp.minimum(jnp.asarray(step, jnp.float32) / recipe.sparsity_warmup_steps, 1.0)
            if recipe.sparsity_warmup_steps else 1.0)
  return {SPARSITY_KEYWORDS[recipe.architecture]: hyper.sparsity_coefficient * warmup}


def _in_compute_dtype(loss, dtype):
  """``loss`` evaluated on the SAE's floating leaves and the batch cast to ``dtype`` (the gradient
  flows back through the casts to the float32 parameters)."""
  if dtype == jnp.float32:
    return loss

  def cast(leaf):
    return leaf.astype(dtype) if jnp.issubdtype(leaf.dtype, jnp.floating) else leaf

  def cast_loss(sae, acts, **options):
    return loss(jax.tree_util.tree_map(cast, sae), acts.astype(dtype), **options)

  return cast_loss


def sae_train_step(recipe: Recipe, state: SAEState, acts_BxD: jax.Array, step: jax.Array,
                   key: jax.Array, *, total_steps: int) -> tuple[SAEState, dict[str, jax.Array]]:
  """One optimizer step of one SAE on ``acts_BxD`` (already normalised), at the shared ``step``
  (an unbatched int32 scalar: the resampling and threshold branches stay branches under a vmap).

  In order: the loss and its gradient (AuxK over the latents idle for ``dead_after_tokens``); the
  optimizer; BatchTopK's threshold from ``threshold_start_step`` on; the firing counts; every
  ``resample_every`` steps, the dead latents resampled from this batch with their moments reset.

  Metrics (float32 scalars): loss, squared_error, sparsity_loss, auxk_loss, l0, dead_fraction (of
  latents idle for ``dead_after_tokens`` after the step), k, learning_rate (this step's).
  """
  sae, hyper = state.sae, state.hyper
  loss = _in_compute_dtype(loss_for(sae), COMPUTE_DTYPES[recipe.compute_dtype])
  options = _loss_options(recipe, hyper, state.firing, step)
  (_, aux), grads = jax.value_and_grad(loss, has_aux=True)(sae, acts_BxD, **options)
  optimizer = sae_optimizer(recipe, hyper.learning_rate, total_steps)
  updates, opt_state = optimizer.update(grads, state.opt_state, sae)
  sae = optax.apply_updates(sae, updates)
  if isinstance(sae, BatchTopKSAE):
    sae = jax.lax.cond(step >= recipe.threshold_start_step,
                       lambda: update_batchtopk_threshold(sae, aux.smallest_code,
                                                          beta=recipe.threshold_beta),
                       lambda: sae)
  firing = update_firing(state.firing, aux.fired, acts_BxD.shape[0])
  if recipe.resample_every:
    def resample():
      dead = dead_latents(firing, recipe.dead_after_tokens)
      resampled_sae, resampled_opt, resampled = resample_dead_latents(key, sae, opt_state,
                                                                      acts_BxD, dead)
      reset = jnp.where(resampled, jnp.zeros((), jnp.int32), firing.tokens_since_fired)
      return resampled_sae, resampled_opt, FiringState(tokens_since_fired=reset)

    due = (step > 0) & (step % recipe.resample_every == 0)
    sae, opt_state, firing = jax.lax.cond(due, resample, lambda: (sae, opt_state, firing))
  metrics = dataclasses.asdict(aux.metrics)
  metrics.update(
      dead_fraction=jnp.mean(dead_latents(firing, recipe.dead_after_tokens).astype(jnp.float32)),
      k=hyper.k_at(step).astype(jnp.float32),
      learning_rate=hyper.learning_rate * learning_rate_factor(recipe, total_steps)(step))
  return SAEState(sae=sae, opt_state=opt_state, firing=firing, hyper=hyper), metrics


def init_train_state(key: jax.Array, groups: Sequence[SAEGroup], source: ActivationSource, *,
                     total_steps: int, normalize_inputs: bool = False,
                     normalization_rows: int = 10_000,
                     normalization_target: str = "unit_mean_squared_norm") -> SAETrainState:
  """The state at step 0. ``key`` gives the stream's key, the resampling keys and the rows the
  input normalisation's scale is estimated on (``normalization_rows`` of them, drawn apart from
  the stream, and scaled to ``normalization_target``'s units: `normalization_scale`); each SAE's
  initialisation comes from its member's seed.

  Raises:
    BadInputError: bad groups, an unknown normalisation target, or rows with no finite scale.
  """
  check_groups(groups)
  stream_key, rng, scale_key = jax.random.split(key, 3)
  if normalize_inputs:
    rows = jax.jit(source.collect, static_argnums=2)(source.arrays, scale_key,
                                                     int(normalization_rows))
    input_scale = normalization_scale(rows, target=normalization_target)
    if not np.isfinite(float(input_scale)):
      raise BadInputError(f"init_train_state: the input normalisation's scale is {input_scale} "
                          f"(the {normalization_rows} rows drawn have mean norm "
                          f"{float(jnp.mean(jnp.linalg.norm(rows, axis=-1)))})")
  else:
    input_scale = jnp.ones((), jnp.float32)
  return SAETrainState(
      step=jnp.zeros((), jnp.int32),
      groups={group.name: init_group_state(group, source.d_in, total_steps=total_steps)
              for group in groups},
      stream=jax.jit(source.init)(source.arrays, stream_key), stream_key=stream_key, rng=rng,
      input_scale=jnp.asarray(input_scale, jnp.float32))


def _init_b_dec(recipe: Recipe, state: SAEState, acts_BxD: jax.Array) -> SAEState:
  """Every member's b_dec from the batch (they share it), as dictionary_learning at step 0."""
  b_dec = initial_b_dec(acts_BxD, recipe.b_dec_init)
  stacked = jnp.broadcast_to(b_dec[None, :], state.sae.b_dec.shape).astype(state.sae.b_dec.dtype)
  return dataclasses.replace(state, sae=state.sae.replace(b_dec=stacked))


def make_train_step(groups: Sequence[SAEGroup], source: ActivationSource, *, total_steps: int):
  """``train_step(state, arrays) -> (state, metrics)``: one batch of the stream, one step of every
  SAE. ``arrays`` are the source's (``source.arrays``), passed in so they are not constants.
  ``metrics`` maps group name -> metric name -> (members,) values."""
  groups = tuple(groups)
  check_groups(groups)

  def train_step(state: SAETrainState, arrays: Any):
    acts, stream = source.next(arrays, state.stream, state.stream_key, state.step)
    acts_BxD = acts.astype(jnp.float32) * state.input_scale
    rng, groups_key = jax.random.split(state.rng)
    new_groups, metrics = {}, {}
    for index, group in enumerate(groups):
      group_state = state.groups[group.name]
      if group.recipe.b_dec_init != "zero":
        group_state = jax.lax.cond(
            state.step == 0, functools.partial(_init_b_dec, group.recipe, group_state, acts_BxD),
            lambda group_state=group_state: group_state)
      keys = jax.random.split(jax.random.fold_in(groups_key, index), len(group.members))
      step_one = functools.partial(sae_train_step, group.recipe, total_steps=total_steps)
      new_groups[group.name], metrics[group.name] = jax.vmap(
          step_one, in_axes=(0, None, None, 0))(group_state, acts_BxD, state.step, keys)
    return SAETrainState(step=state.step + 1, groups=new_groups, stream=stream,
                         stream_key=state.stream_key, rng=rng,
                         input_scale=state.input_scale), metrics

  return train_step


def make_train_chunk(groups: Sequence[SAEGroup], source: ActivationSource, *, total_steps: int):
  """``chunk(state, arrays, num_steps) -> (state, metrics)``: ``num_steps`` (static) train steps
  in one `jax.lax.scan`, jitted; metrics stacked over the steps (leading axis)."""
  step = make_train_step(groups, source, total_steps=total_steps)

  def chunk(state, arrays, num_steps):
    return jax.lax.scan(lambda carry, _: step(carry, arrays), state, None, length=num_steps)

  # The state's buffers are reused off the CPU (on a CPU a checkpoint may still be reading them).
  donate = () if jax.default_backend() == "cpu" else (0,)
  return jax.jit(chunk, static_argnums=2, donate_argnums=donate)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EvalStats:
  """An SAE judged on a fixed evaluation set (in the normalised space; every statistic is scale
  invariant). Stacked over a group's members.

  Attributes:
    fve: fraction of variance explained (centred), `fraction_variance_explained`.
    nmse: normalised MSE (uncentred, per example), `normalized_mse`.
    l0: mean nonzero codes per example.
    dead_fraction: latents that never fired on the set.
    density: (F,) the fraction of examples each latent fired on.
  """

  fve: jax.Array
  nmse: jax.Array
  l0: jax.Array
  dead_fraction: jax.Array
  density: jax.Array


def encode_for_eval(sae: SAE, hyper: Hyperparams, step: jax.Array, x: jax.Array) -> jax.Array:
  """Inference codes: a TopK SAE with its current k, the others by their `encode` (BatchTopK by
  its threshold)."""
  if isinstance(sae, TopKSAE):
    return sae.encode(x, k=hyper.k_at(step))
  return sae.encode(x)


def evaluate_sae(sae: SAE, hyper: Hyperparams, step: jax.Array, acts_NxD: jax.Array, *,
                 chunk_size: int = 2048) -> EvalStats:
  """`EvalStats` of one SAE on (N, D) activations, encoded ``chunk_size`` rows at a time (the
  codes of the whole set are never held at once)."""
  num_rows, d_in = acts_NxD.shape
  num_chunks = -(-num_rows // chunk_size)
  padding = num_chunks * chunk_size - num_rows
  padded = jnp.concatenate([acts_NxD, jnp.zeros((padding, d_in), acts_NxD.dtype)], axis=0)
  valid = (jnp.arange(num_chunks * chunk_size) < num_rows).reshape(num_chunks, chunk_size)

  def one(chunk_and_valid):
    chunk, valid_C = chunk_and_valid
    codes = encode_for_eval(sae, hyper, step, chunk)
    active = (codes != 0) & valid_C[:, None]
    return sae.decode(codes), jnp.sum(active, axis=-1), jnp.sum(active, axis=0, dtype=jnp.int32)

  x_hat, nonzero, active = jax.lax.map(one, (padded.reshape(num_chunks, chunk_size, d_in), valid))
  x_hat = x_hat.reshape(-1, d_in)[:num_rows]
  density = jnp.sum(active, axis=0).astype(jnp.float32) / num_rows
  return EvalStats(fve=fraction_variance_explained(acts_NxD, x_hat),
                   nmse=normalized_mse(acts_NxD, x_hat),
                   l0=jnp.sum(nonzero).astype(jnp.float32) / num_rows,
                   dead_fraction=jnp.mean((density == 0).astype(jnp.float32)), density=density)


def make_evaluate(groups: Sequence[SAEGroup], *, chunk_size: int = 2048):
  """``evaluate(state, eval_acts) -> group name -> EvalStats`` (stacked over members), jitted;
  ``eval_acts`` (N, D) raw, multiplied by the state's input scale here."""
  groups = tuple(groups)

  @jax.jit
  def evaluate(state: SAETrainState, eval_acts: jax.Array) -> dict[str, EvalStats]:
    acts = eval_acts.astype(jnp.float32) * state.input_scale
    one = functools.partial(evaluate_sae, chunk_size=chunk_size)
    return {group.name: jax.vmap(one, in_axes=(0, 0, None, None))(
        state.groups[group.name].sae, state.groups[group.name].hyper, state.step, acts)
            for group in groups}

  return evaluate


def trained_saes(groups: Sequence[SAEGroup], state: SAETrainState) -> dict[str, SAE]:
  """label -> each trained SAE on raw activations: unstacked, its input normalisation folded in
  (`fold_normalization`), a TopK or BatchTopK SAE given its member's k (the k it ends with)."""
  saes = {}
  for group in groups:
    stacked = state.groups[group.name].sae
    for index, (label, member) in enumerate(zip(group.labels(), group.members)):
      sae = jax.tree_util.tree_map(lambda leaf, index=index: leaf[index], stacked)
      if group.recipe.uses_k:
        sae = sae.replace(k=int(group.member_k(member)))
      saes[label] = fold_normalization(sae, state.input_scale)
  return saes


def group_metrics_by_label(groups: Sequence[SAEGroup], per_group: Mapping[str, Any]
                           ) -> dict[str, np.ndarray]:
  """Group name -> name -> (..., members) values, concatenated over the groups on the last axis
  in group order (the order of `all_labels`): name -> (..., SAEs)."""
  names = []
  for group in groups:
    for name in per_group[group.name]:
      if name not in names:
        names.append(name)
  joined = {}
  for name in names:
    parts = []
    for group in groups:
      values = per_group[group.name].get(name)
      if values is None:
        raise BadInputError(f"metric {name!r} missing for group {group.name!r}")
      parts.append(np.asarray(values))
    joined[name] = np.concatenate(parts, axis=-1)
  return joined


def all_labels(groups: Sequence[SAEGroup]) -> list[str]:
  """Every SAE's label, group by group: the order of `group_metrics_by_label`."""
  return [label for group in groups for label in group.labels()]
