"""Benchmarks, measured as ratios taken in one run: ``run(config, workdir)``.

Sections (``config.sections``):

* ``transforms``: the step time of a GPT (GPT-2 small on a GPU, a small one on CPU) with a gradient
  transform on every matrix that touches the residual stream, divided by the plain optax step, each
  timed as the training loop's own compiled chunk (`training.compile_chunk`: steps scanned in one
  call, random tokens sampled inside):
  `project_out` of K orthonormal directions at every residual site; `project_out` of the span of S
  selected rows of an N-row dictionary at every residual site (refreshed on a schedule; the refresh's
  cost is priced by a variant that refreshes every step and amortized over the schedule); `attribute`
  onto all N dictionary rows at the middle residual site. Variants are timed in interleaved rounds
  and each ratio is the median over rounds of (variant / plain) from the same round; `plain_again`,
  the plain step compiled twice, gives the noise floor.
* ``seeds``: training S runs of the flagship's classifier in one program against S programs one
  after another: in one process (compiling, and with a warm compilation cache), as separate jobs of
  the training binary, and per step once compiled.
* ``updates``: each transform variant's update alone (`tx.update` jitted, on fixed random
  gradients, its state as initialised; the dictionary span as its refresher initialises it) against
  AdamW's update alone, timed in interleaved rounds like ``transforms``: the transform's own cost,
  apart from the step it sits in, so that two versions of the transforms (or two machines) compare
  without the rest of the step's time in the ratio.
* ``compile``: the loop's chunk for the plain step and for each transform variant, compiled with
  XLA's default options and with the loop's (`training.compiler_options()`: on CPU,
  `training.CPU_COMPILER_OPTIONS`), alternately, each ``config.compile_rounds`` times with the
  persistent cache off: the ratio of compile times, of step times once compiled, and the largest
  difference between the parameters each reaches after the same steps.
* ``sae`` (selected only by name): SAE training throughput in activations per second, TopK of
  ``config.sae.d_in`` x each of ``config.sae.d_sae``, k ``config.sae.k``, Adam, in
  ``config.sae.compute_dtype``: landscape's SAE trainer (`landscape.sae.make_train_chunk`, the
  compiled chunk ``experiments.train_sae`` runs) against a PyTorch peer written as
  dictionary_learning's ``TopKTrainer`` trains (see `sae_torch_peer`), timed in the same run in
  interleaved rounds, eager and under ``torch.compile``. PyTorch is optional: without it the peer
  is reported as not installed.

Writes ``benchmark.json`` to ``workdir`` and prints a table.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from landscape import data
from landscape import directions
from landscape import models
from landscape import objectives
from landscape import sae as sae_lib
from landscape import training
from landscape import transforms

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
SECTIONS = ("transforms", "updates", "seeds", "compile", "sae")
ADAMW = "adamw (reference)"
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gpt_config(config: ml_collections.ConfigDict) -> models.GPTConfig:
  if config.compute_dtype not in DTYPES:
    raise training.ConfigError(f"config.model.compute_dtype={config.compute_dtype!r}: expected one "
                               f"of {tuple(DTYPES)}")
  return models.GPTConfig(vocab_size=config.vocab_size, max_len=config.seq_len,
                          d_model=config.d_model, num_layers=config.num_layers,
                          num_heads=config.num_heads, compute_dtype=DTYPES[config.compute_dtype],
                          attention=config.attention or None, scan_layers=config.scan_layers)


REFRESHING = "_refresh_every_step"


def dictionary_variant(config: ml_collections.ConfigDict) -> str:
  return f"project_out_dictionary{config.dictionary_size}_select{config.dictionary_selected}"


def residual_sites(num_layers: int) -> tuple[str, ...]:
  return ("embed",) + tuple(f"blocks.{layer}.resid_post" for layer in range(num_layers))


class Variant(NamedTuple):
  """One timed variant: the transform placed before the optimizer (None: plain), the refreshers it
  needs in the loop, and what the loop hands the transform each step from the state."""

  transform: optax.GradientTransformationExtraArgs | None = None
  refreshers: tuple[Any, ...] = ()
  optimizer_extra_args: Callable[[training.TrainState], dict] | None = None


def transform_variants(config: ml_collections.ConfigDict, model: models.Model,
                       params: Any) -> dict[str, Variant]:
  """name -> the variant, each run by the loop's own chunk as training would run it."""
  width = config.model.d_model
  sites = residual_sites(config.model.num_layers)
  rng = np.random.default_rng(0)
  # "plain_again" is the plain step compiled and timed a second time: its ratio to plain (an A/A
  # comparison) is the run's noise floor for every other ratio.
  variants = {"plain": Variant(), "plain_again": Variant()}
  for num_directions in config.num_directions:
    basis = directions.make_basis(rng.normal(size=(num_directions, width)), site="resid")
    bases = {site: basis.replace(site=site) for site in sites}
    variants[f"project_out_k{num_directions}"] = Variant(
        transforms.project_out(transforms.site_directions(bases, model.site_links, params=params)))
  dictionary_NxD = jnp.asarray(rng.normal(size=(config.dictionary_size, width)), jnp.float32)
  selected = jnp.asarray(rng.choice(config.dictionary_size, config.dictionary_selected,
                                    replace=False), jnp.int32)
  span = transforms.dictionary_directions(
      {site: dictionary_NxD for site in sites}, {site: selected for site in sites},
      model.site_links, params=params, extra_arg="span")
  held_span = lambda state: {"span": state.refreshed["span"]}
  # The span is re-estimated by the loop's refresher: on its schedule (the timed steps fall between
  # refreshes, see `run`), or at every step, which prices one refresh.
  dictionary_name = dictionary_variant(config)
  for name, every in ((dictionary_name, config.refresh_every), (dictionary_name + REFRESHING, 1)):
    variants[name] = Variant(transforms.project_out(span),
                             (transforms.span_refresher(span, every=every),), held_span)
  middle = sites[len(sites) // 2]
  variants[f"attribute_dictionary{config.dictionary_size}"] = Variant(
      transforms.attribute(transforms.dictionary_directions({middle: dictionary_NxD}, None,
                                                            model.site_links, params=params)))
  return variants


def _seconds_per_step(runner: training.ChunkRunner, state: Any, num_steps: int
                      ) -> tuple[float, Any]:
  """Seconds per step of one call of the loop's compiled chunk of ``num_steps`` steps."""
  start = time.perf_counter()
  state, metrics = runner.run(state, num_steps)
  jax.block_until_ready((state, metrics))
  return (time.perf_counter() - start) / num_steps, state


def _single_device_mesh():
  return training.make_mesh({"seed": 1, "data": 1, "model": 1})


def _compiled_runs(*, model: models.Model, objective: objectives.Objective,
                   optimizer: optax.GradientTransformationExtraArgs, dataset: data.Dataset,
                   batch_size: int, keys: jax.Array, refreshers=(), optimizer_extra_args=None,
                   num_steps: tuple[int, ...]) -> tuple[training.ChunkRunner, Any]:
  """(the loop's chunk runner on one device, the runs' placed state), compiled for ``num_steps``."""
  state = training.stack_runs([training.init_state(key, model=model, objective=objective,
                                                   optimizer=optimizer, refreshers=refreshers)
                               for key in keys])
  mesh = _single_device_mesh()
  runner = training.compile_chunk(model=model, objective=objective, optimizer=optimizer,
                                  dataset=dataset, batch_size=batch_size, mesh=mesh,
                                  shardings=training.state_shardings(state, mesh),
                                  refreshers=refreshers, optimizer_extra_args=optimizer_extra_args)
  state = runner.place(state)
  for length in sorted(set(num_steps)):
    runner.precompile(state, length)
  return runner, state


def random_tokens(config: ml_collections.ConfigDict) -> data.Dataset:
  """Uniform random tokens of the benchmark's GPT, drawn fresh at every step (next-token labels)."""
  seq_len, vocab_size = config.model.seq_len, config.model.vocab_size

  def generate(key, batch_size):
    tokens = jax.random.randint(key, (batch_size, seq_len + 1), 0, vocab_size)
    return dict(inputs=tokens[:, :-1], labels=tokens[:, 1:],
                label_mask=jnp.ones((batch_size, seq_len), jnp.float32))

  return data.generator_dataset("random_tokens", generate, {})


def _gpt_setup(config: ml_collections.ConfigDict):
  """(model, key, params, dataset, objective): the benchmark's GPT on random tokens."""
  model = models.gpt(gpt_config(config.model))
  key = jax.random.PRNGKey(0)
  return (model, key, model.init(key), random_tokens(config),
          objectives.compose(objectives.cross_entropy()))


def _variant_optimizer(config: ml_collections.ConfigDict,
                       variant: Variant) -> optax.GradientTransformationExtraArgs:
  """AdamW with the variant's transform (if any) chained before it."""
  base = optax.adamw(config.learning_rate, weight_decay=0.1)
  return (optax.chain(variant.transform, base) if variant.transform is not None else
          optax.chain(base))


def benchmark_transforms(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Each variant's step time as the training loop's compiled chunk runs it (batch sampled inside)."""
  model, key, params, dataset, objective = _gpt_setup(config)
  runners, states = {}, {}
  for name, variant in transform_variants(config, model, params).items():
    optimizer = _variant_optimizer(config, variant)
    logging.info("compiling %s", name)
    runners[name], states[name] = _compiled_runs(
        model=model, objective=objective, optimizer=optimizer, dataset=dataset,
        batch_size=config.batch_size, keys=key[None], refreshers=variant.refreshers,
        optimizer_extra_args=variant.optimizer_extra_args,
        num_steps=(config.warmup_steps, config.timed_steps))
    _, states[name] = _seconds_per_step(runners[name], states[name], config.warmup_steps)
  rounds = {name: [] for name in runners}
  order = np.random.default_rng(0)
  for round_index in range(config.rounds):
    for name in order.permutation(list(runners)):  # a new order every round: none always first
      seconds, states[name] = _seconds_per_step(runners[name], states[name], config.timed_steps)
      rounds[name].append(seconds)
    logging.info("round %d: %s", round_index,
                 {name: f"{1e3 * values[-1]:.2f} ms" for name, values in rounds.items()})
  plain = np.asarray(rounds["plain"])
  tokens_per_step = config.batch_size * config.model.seq_len
  results = {}
  for name, values in rounds.items():
    values = np.asarray(values)
    results[name] = dict(ms_per_step=float(1e3 * np.median(values)),
                         ratio_to_plain=float(np.median(values / plain)),
                         tokens_per_second=float(tokens_per_step / np.median(values)))
  # The timed steps of the scheduled variant fall between refreshes; the variant that refreshes
  # every step prices one refresh, spread here over the schedule's refresh_every steps.
  dictionary_name = dictionary_variant(config)
  scheduled, refreshing = results[dictionary_name], results[dictionary_name + REFRESHING]
  scheduled["ratio_with_refreshes_amortized"] = scheduled["ratio_to_plain"] + (
      refreshing["ratio_to_plain"] - scheduled["ratio_to_plain"]) / config.refresh_every
  return results


def benchmark_updates(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Each transform's update alone against AdamW's update alone (see the module docstring)."""
  model, key, params, _, _ = _gpt_setup(config)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  gradients = jax.tree_util.tree_unflatten(treedef, [
      jax.random.normal(leaf_key, leaf.shape, leaf.dtype)
      for leaf_key, leaf in zip(jax.random.split(key, len(leaves)), leaves)])
  updaters = {ADAMW: (optax.adamw(config.learning_rate, weight_decay=0.1), {})}
  for name, variant in transform_variants(config, model, params).items():
    if variant.transform is None or name.endswith(REFRESHING):  # plain; a refresh is no update
      continue
    extra_args = {}
    if variant.optimizer_extra_args is not None:
      # What the loop hands the transform, from the refreshers' initial values (all it reads of
      # the state).
      refreshed = {refresher.name: refresher.init(key, params) for refresher in variant.refreshers}
      extra_args = variant.optimizer_extra_args(types.SimpleNamespace(refreshed=refreshed))
    updaters[name] = (variant.transform, extra_args)
  calls = {}
  for name, (transform, extra_args) in updaters.items():
    update = jax.jit(lambda grads, state, extra_args, transform=transform: transform.update(
        grads, state, params, **extra_args))
    calls[name] = functools.partial(update, gradients, transform.init(params), extra_args)
    jax.block_until_ready(calls[name]())  # compiles

  def milliseconds_per_update(call):
    start = time.perf_counter()
    for _ in range(config.timed_steps):
      outputs = call()
    jax.block_until_ready(outputs)
    return 1e3 * (time.perf_counter() - start) / config.timed_steps

  rounds = {name: [] for name in calls}
  order = np.random.default_rng(0)
  for _ in range(config.rounds):
    for name in order.permutation(list(calls)):
      rounds[name].append(milliseconds_per_update(calls[name]))
  reference = np.asarray(rounds[ADAMW])
  return {name: dict(ms_per_update=float(np.median(values)),
                     ratio_to_adamw_update=float(np.median(np.asarray(values) / reference)))
          for name, values in rounds.items()}


def benchmark_compile(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Compile and step times of the loop's chunk with the loop's XLA options against the defaults."""
  model, key, params, dataset, objective = _gpt_setup(config)
  options = {"default": {}, "loop": training.compiler_options()}
  chosen = [name for name in transform_variants(config, model, params)
            if name in ("plain", f"project_out_k{config.num_directions[0]}")]
  results = {}
  persistent_cache = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    for name in chosen:
      variant = transform_variants(config, model, params)[name]
      optimizer = _variant_optimizer(config, variant)
      step = training.make_train_step(model=model, objective=objective, optimizer=optimizer,
                                      refreshers=variant.refreshers,
                                      optimizer_extra_args=variant.optimizer_extra_args)
      state = training.stack_runs([training.init_state(key, model=model, objective=objective,
                                                       optimizer=optimizer,
                                                       refreshers=variant.refreshers)])
      compile_seconds = {label: [] for label in options}
      step_seconds = {label: [] for label in options}
      reached = {}
      for _ in range(config.compile_rounds):
        for label, compiler_options in options.items():
          # A fresh chunk function each time: JAX's in-memory caches are keyed on the function, so
          # nothing is reused from an earlier compile of the same program.
          chunk = training.make_chunk(step, dataset, config.batch_size)
          program = jax.jit(chunk, static_argnums=(2,), compiler_options=compiler_options)
          start = time.perf_counter()
          compiled = program.lower(state, dataset.arrays, config.timed_steps).compile()
          compile_seconds[label].append(time.perf_counter() - start)
          after, metrics = compiled(state, dataset.arrays)  # warm-up call
          start = time.perf_counter()
          after, metrics = compiled(after, dataset.arrays)
          jax.block_until_ready((after, metrics))
          step_seconds[label].append((time.perf_counter() - start) / config.timed_steps)
          reached[label] = training.fetch(after.params)
      difference = max(float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-30))
                       for a, b in zip(jax.tree_util.tree_leaves(reached["default"]),
                                       jax.tree_util.tree_leaves(reached["loop"])))
      median = lambda values: float(np.median(values))
      results[name] = dict(
          options=options["loop"],
          compile_seconds_default=median(compile_seconds["default"]),
          compile_seconds_loop=median(compile_seconds["loop"]),
          compile_ratio=median(np.asarray(compile_seconds["loop"]) /
                               np.asarray(compile_seconds["default"])),
          step_ratio=median(np.asarray(step_seconds["loop"]) / np.asarray(step_seconds["default"])),
          max_relative_param_difference=difference)
  finally:
    jax.config.update("jax_enable_compilation_cache", persistent_cache)
  return results


def benchmark_seeds(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """S runs of the decoy-digits MLP: one program against S programs one after another.

  For each S in ``config.seeds.num_runs``, three comparisons:
  * end to end, compiling: S calls of `training.train` with one seed each against one call with S
    seeds, with the persistent compilation cache off (each call compiles, as S separate jobs on a
    fresh machine would);
  * end to end, cache warm: the same after an untimed pass has put both programs in the persistent
    cache (S jobs rerun on a machine that has run them before);
  * per step once compiled: the loop's compiled chunk (`training.compile_chunk`, the runner
    `training.train` uses) with S runs against S times the chunk with one run (the throughput of
    vmapping the runs, all overheads aside);
  * as separate jobs: S invocations of the ``experiments.train`` binary (``:decoy`` preset, one seed
    each) against one invocation with ``--config.num_seeds=S``, each a fresh process, compilation
    cache warm (the way a researcher runs seeds from a shell loop). Skipped, with a warning, when
    the binaries are not beside the package (a non-editable install).
  """
  settings = config.seeds
  # Every run must start from scratch: a run left here by an earlier benchmark would resume at its
  # last step and time nothing.
  runs_dir = os.path.join(os.path.abspath(workdir), "seeds")
  shutil.rmtree(runs_dir, ignore_errors=True)
  dataset = data.decoy_digits()
  model = models.mlp(64, tuple(settings.hidden_sizes), 10)
  objective = objectives.compose(objectives.cross_entropy())
  optimizer = optax.adam(1e-3)

  def loop_config(num_seeds: int, seed: int) -> ml_collections.ConfigDict:
    loop = training.loop_config()
    loop.update(dict(seed=seed, num_seeds=num_seeds, steps=settings.steps,
                     batch_size=settings.batch_size, log_every=settings.steps,
                     eval_every=0, checkpoint_every=0, steps_per_call=settings.steps_per_call,
                     tensorboard=False))
    loop.mesh.num_devices = 1
    return loop

  def end_to_end(num_seeds: int, seed: int, name: str) -> float:
    start = time.perf_counter()
    training.train(loop_config(num_seeds, seed), os.path.join(runs_dir, name), model=model,
                   objective=objective, optimizer=optimizer, dataset=dataset)
    return time.perf_counter() - start

  def one_by_one_and_together(seconds: Callable[[int, int, str], float], num_runs: int,
                              tag: str) -> tuple[float, float]:
    """(S one-seed runs one after another, one S-seed run), each in a fresh workdir."""
    one_by_one = sum(seconds(1, seed, f"{tag}_seed{seed}") for seed in range(num_runs))
    return one_by_one, seconds(num_runs, 0, f"{tag}_together{num_runs}")

  def seconds_per_step(num_runs: int) -> float:
    runner, state = _compiled_runs(
        model=model, objective=objective, optimizer=optimizer, dataset=dataset,
        batch_size=settings.batch_size, keys=jax.random.split(jax.random.PRNGKey(0), num_runs),
        num_steps=(settings.steps_per_call,))
    _, state = _seconds_per_step(runner, state, settings.steps_per_call)
    start = time.perf_counter()
    for _ in range(settings.timed_calls):
      state, metrics = runner.run(state, settings.steps_per_call)
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - start) / (settings.timed_calls * settings.steps_per_call)

  def binary_seconds(num_seeds: int, seed: int, name: str) -> float:
    command = [sys.executable, "-m", "experiments.train", "--config=configs/train.py:decoy",
               f"--workdir={os.path.join(runs_dir, name)}", f"--config.seed={seed}",
               f"--config.num_seeds={num_seeds}", f"--config.steps={settings.steps}",
               f"--config.batch_size={settings.batch_size}",
               f"--config.model.hidden_sizes={tuple(settings.hidden_sizes)}",
               f"--config.steps_per_call={settings.steps_per_call}",
               f"--config.log_every={settings.steps}", "--config.eval_every=0",
               "--config.checkpoint_every=0", "--config.tensorboard=False",
               "--config.mesh.num_devices=1"]
    start = time.perf_counter()
    job = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if job.returncode:
      raise RuntimeError(f"{' '.join(command)} exited with {job.returncode}:\n{job.stderr[-4000:]}")
    return seconds

  binaries_here = os.path.exists(os.path.join(REPOSITORY, "experiments", "train.py"))
  if not binaries_here:
    logging.warning("experiments/train.py is not beside the package: separate jobs not measured")
  one_run_per_step = seconds_per_step(1)
  rows = {}
  cache_was_on = jax.config.jax_enable_compilation_cache
  for num_runs in settings.num_runs:
    jax.config.update("jax_enable_compilation_cache", False)
    try:
      jax.clear_caches()
      cold = one_by_one_and_together(end_to_end, num_runs, f"cold{num_runs}")
    finally:
      jax.config.update("jax_enable_compilation_cache", cache_was_on)
    warm = (float("nan"),) * 2
    if cache_was_on:
      # An untimed pass puts both programs in the persistent cache.
      one_by_one_and_together(end_to_end, num_runs, f"prime{num_runs}")
      jax.clear_caches()
      warm = one_by_one_and_together(end_to_end, num_runs, f"warm{num_runs}")
    per_step = seconds_per_step(num_runs)
    jobs = (float("nan"),) * 2
    if binaries_here and cache_was_on:
      one_by_one_and_together(binary_seconds, num_runs, f"prime_jobs{num_runs}")
      jobs = one_by_one_and_together(binary_seconds, num_runs, f"jobs{num_runs}")
    rows[str(num_runs)] = dict(
        separate_jobs_seconds_one_by_one=jobs[0], separate_jobs_seconds_together=jobs[1],
        separate_jobs_speedup=jobs[0] / jobs[1],
        steps=settings.steps,
        compiling_seconds_one_by_one=cold[0], compiling_seconds_together=cold[1],
        compiling_speedup=cold[0] / cold[1],
        cache_warm_seconds_one_by_one=warm[0], cache_warm_seconds_together=warm[1],
        cache_warm_speedup=warm[0] / warm[1],
        ms_per_step_together=1e3 * per_step, ms_per_step_one_run=1e3 * one_run_per_step,
        steady_state_speedup=num_runs * one_run_per_step / per_step)
  return rows


SAE_COMPUTE_DTYPES = ("float32", "bfloat16")


def check_sae_config(settings: ml_collections.ConfigDict) -> None:
  """ConfigError naming the first ``config.sae`` field that cannot be benchmarked."""
  def fail(field, why):
    raise training.ConfigError(f"config.sae.{field}={settings[field]!r}: {why}")

  for field in ("d_in", "k", "batch_size", "steps", "rounds", "pool_batches"):
    if not isinstance(settings[field], int) or settings[field] < 1:
      fail(field, "must be an int >= 1")
  if not isinstance(settings.warmup_steps, int) or settings.warmup_steps < 1:
    fail("warmup_steps", "must be an int >= 1 (the first call compiles)")
  widths = tuple(settings.d_sae)
  if not widths or not all(isinstance(width, int) and width >= settings.k for width in widths):
    fail("d_sae", f"give one or more ints >= k={settings.k}")
  if settings.compute_dtype not in SAE_COMPUTE_DTYPES:
    fail("compute_dtype", f"expected one of {SAE_COMPUTE_DTYPES}")
  if settings.peer not in ("torch", ""):
    fail("peer", "expected 'torch' or '' (no peer)")


def _activation_pool(settings: ml_collections.ConfigDict) -> np.ndarray:
  """(pool_batches, batch, D) float32 activations, cycled through by both trainers: Gaussian
  with an offset (activations are rarely centred), unit mean squared norm."""
  rng = np.random.default_rng(0)
  pool = rng.normal(size=(settings.pool_batches, settings.batch_size, settings.d_in)) + 0.5
  return (pool / np.sqrt(np.mean(np.sum(pool ** 2, -1)))).astype(np.float32)


def _pool_source(pool: np.ndarray) -> sae_lib.ActivationSource:
  """Batch t is pool[t mod P]: the SAE trainer's input with no data pipeline to time."""
  num_batches, batch_size, d_in = pool.shape

  def next_batch(arrays, state, key, step):
    del key
    return jax.lax.dynamic_index_in_dim(arrays["pool"], step % num_batches, keepdims=False), state

  def collect(arrays, key, num_rows):
    del key
    return arrays["pool"].reshape(-1, d_in)[:num_rows]

  return sae_lib.ActivationSource(
      name="benchmark_pool", d_in=d_in, batch_size=batch_size, arrays={"pool": jnp.asarray(pool)},
      init=lambda arrays, key: (), next=next_batch, collect=collect, eval_acts=pool[0])


def _sae_recipe(settings: ml_collections.ConfigDict, d_sae: int) -> sae_lib.Recipe:
  # dictionary_learning's TopK recipe (AuxK on latents idle 10M tokens, unit-norm decoder with the
  # parallel gradient removed, clipping at 1, Adam); b_dec from zero and no warm-up, so that every
  # timed step does the same work on both sides.
  return sae_lib.Recipe("topk", d_sae=d_sae, k=settings.k, warmup_steps=0, b_dec_init="zero",
                        compute_dtype=settings.compute_dtype)


def landscape_sae_trainer(settings: ml_collections.ConfigDict, d_sae: int, pool: np.ndarray):
  """(run(num_steps) -> float32 losses of those steps, its SAE at step 0): landscape's compiled
  SAE chunk (`landscape.sae.make_train_chunk`) training one TopK SAE on the pool."""
  source = _pool_source(pool)
  group = sae_lib.SAEGroup("topk", _sae_recipe(settings, d_sae),
                           (sae_lib.Member(seed=0, learning_rate=settings.learning_rate),))
  total_steps = 1_000_000  # no decay: the schedule is constant either way
  state = sae_lib.init_train_state(jax.random.PRNGKey(0), [group], source, total_steps=total_steps)
  initial = jax.tree_util.tree_map(lambda leaf: np.asarray(leaf[0]), state.groups["topk"].sae)
  chunk = sae_lib.make_train_chunk([group], source, total_steps=total_steps)
  holder = {"state": state}

  def run(num_steps: int) -> np.ndarray:
    holder["state"], metrics = chunk(holder["state"], source.arrays, num_steps)
    return np.asarray(metrics["topk"]["loss"][:, 0])  # fetching it waits for the steps

  return run, initial


def sae_torch_peer(torch: Any, settings: ml_collections.ConfigDict, initial: Any,
                   pool: np.ndarray, *, compile_forward: bool):
  """run(num_steps) -> losses: a TopK SAE trained in PyTorch the way dictionary_learning's
  ``TopKTrainer.update`` trains one (``trainers/top_k.py``), from landscape's initial weights.

  Per step: the forward and loss under ``torch.autocast`` in the compute dtype (ReLU, top-k,
  scatter, decoder, squared error, AuxK over the latents idle 10M tokens normalised by the
  residual's centred squared norm, coefficient 1/32); ``backward``; the decoder gradient's
  component along each decoder direction removed; ``clip_grad_norm_(1.0)``; Adam (fused on CUDA);
  a ``LambdaLR`` step; decoder columns renormalised; tokens-since-fired updated. One departure,
  shared with landscape: AuxK takes a fixed ``k_aux = D // 2`` with the live latents masked, where
  dictionary_learning takes ``min(D // 2, dead count)`` found on the host (a device-to-host sync
  per step, and a graph break under ``torch.compile``). ``compile_forward`` compiles the forward
  and loss (``torch.compile``; its backward through AOTAutograd); the optimizer stays eager.
  """
  device = "cuda" if torch.cuda.is_available() else "cpu"
  dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[settings.compute_dtype]
  d_in, d_sae = initial.W_enc.shape
  k, k_aux, dead_after, auxk_alpha = settings.k, d_in // 2, 10_000_000, 1 / 32
  encoder = torch.nn.Linear(d_in, d_sae).to(device)
  decoder = torch.nn.Linear(d_sae, d_in, bias=False).to(device)
  b_dec = torch.nn.Parameter(torch.zeros(d_in, device=device))
  with torch.no_grad():
    encoder.weight.copy_(torch.as_tensor(np.array(initial.W_enc).T))
    encoder.bias.copy_(torch.as_tensor(np.array(initial.b_enc)))
    decoder.weight.copy_(torch.as_tensor(np.array(initial.W_dec).T))
    b_dec.copy_(torch.as_tensor(np.array(initial.b_dec)))
  parameters = [encoder.weight, encoder.bias, decoder.weight, b_dec]
  optimizer = torch.optim.Adam(parameters, lr=settings.learning_rate, betas=(0.9, 0.999),
                               fused=device == "cuda")
  scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda step: 1.0)
  tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)
  batches = torch.as_tensor(np.array(pool)).to(device)

  def forward_loss(x, dead):
    with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
      post = torch.relu(encoder(x - b_dec))
      values, indices = post.topk(k, sorted=False, dim=-1)
      codes = torch.zeros_like(post).scatter(-1, indices, values)
      x_hat = decoder(codes) + b_dec
      residual = x - x_hat
      l2 = residual.float().pow(2).sum(-1).mean()
      masked = torch.where(dead[None], post, torch.full_like(post, -torch.inf))
      aux_values, aux_indices = masked.topk(k_aux, sorted=False, dim=-1)
      aux_values = torch.where(torch.isfinite(aux_values), aux_values,
                               torch.zeros_like(aux_values))
      aux_codes = torch.zeros_like(post).scatter(-1, aux_indices, aux_values)
      held = residual.detach().float()
      aux_error = (held - decoder(aux_codes).float()).pow(2).sum(-1).mean()
      centred = (held - held.mean(0, keepdim=True)).pow(2).sum(-1).mean()
      auxk = torch.where(dead.any(), aux_error / centred, torch.zeros_like(aux_error))
      loss = l2 + auxk_alpha * auxk.nan_to_num(0.0)
    fired = torch.zeros(d_sae, dtype=torch.bool, device=x.device)
    fired[indices.flatten()] = True
    return loss, fired

  forward = torch.compile(forward_loss) if compile_forward else forward_loss
  step_counter = [0]

  def one_step(x):
    nonlocal tokens_since_fired
    loss, fired = forward(x, tokens_since_fired >= dead_after)
    loss.backward()
    with torch.no_grad():
      weight, grad = decoder.weight, decoder.weight.grad  # (D, F): columns are directions
      unit = weight / weight.norm(dim=0, keepdim=True)
      grad -= (grad * unit).sum(0, keepdim=True) * unit
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    with torch.no_grad():
      decoder.weight /= decoder.weight.norm(dim=0, keepdim=True)
      tokens_since_fired = torch.where(fired, torch.zeros_like(tokens_since_fired),
                                       tokens_since_fired + x.shape[0])
    return loss.detach()

  def run(num_steps: int) -> np.ndarray:
    losses = []
    for _ in range(num_steps):
      losses.append(one_step(batches[step_counter[0] % len(batches)]))
      step_counter[0] += 1
    return torch.stack(losses).float().cpu().numpy()  # waits for the device

  return run


def _import_torch() -> tuple[Any, str]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None, "peer not installed (PyTorch is optional: pip install torch)"
  return torch, f"torch {torch.__version__}"


def benchmark_sae(settings: ml_collections.ConfigDict) -> dict[str, Any]:
  """For each width: landscape's and the peer's activations per second, each timed over
  ``steps`` steps per round in ``rounds`` interleaved rounds after ``warmup_steps`` and one untimed
  call of ``steps`` (which compile), the median round taken; the ratio is landscape's over the
  faster peer variant's. The first step's loss of each side (same initial weights, same batch) says
  they compute the same thing."""
  pool = _activation_pool(settings)
  torch, peer_name = _import_torch() if settings.peer == "torch" else (None, "no peer (peer='')")
  results = {}
  for d_sae in settings.d_sae:
    landscape_run, initial = landscape_sae_trainer(settings, d_sae, pool)
    trainers = {"landscape": landscape_run}
    peer_errors = {}
    if torch is not None:
      variants = {"peer_eager": False}
      if settings.peer_compile:
        variants["peer_compiled"] = True
      for name, compiled in variants.items():
        trainers[name] = sae_torch_peer(torch, settings, initial, pool, compile_forward=compiled)
    first_losses = {}
    for name in list(trainers):
      try:
        first_losses[name] = float(trainers[name](settings.warmup_steps)[0])
        trainers[name](settings.steps)  # untimed: compiles landscape's chunk of the timed length
      except Exception as error:  # torch.compile needs a working toolchain; report, go on eager
        if name != "peer_compiled":
          raise
        peer_errors[name] = f"{type(error).__name__}: {str(error)[:300]}"
        logging.warning("torch.compile failed for d_sae=%d: %s", d_sae, peer_errors[name])
        del trainers[name]
    seconds = {name: [] for name in trainers}
    order = np.random.default_rng(0)
    for _ in range(settings.rounds):
      for name in order.permutation(list(trainers)):
        start = time.perf_counter()
        trainers[name](settings.steps)
        seconds[name].append(time.perf_counter() - start)
    rate = {name: settings.steps * settings.batch_size / float(np.median(values))
            for name, values in seconds.items()}
    best_peer = max((rate[name] for name in rate if name != "landscape"), default=None)
    results[str(d_sae)] = dict(
        d_in=settings.d_in, k=settings.k, batch_size=settings.batch_size,
        compute_dtype=settings.compute_dtype, steps=settings.steps, rounds=settings.rounds,
        peer=peer_name, landscape_acts_per_second=rate["landscape"],
        peer_eager_acts_per_second=rate.get("peer_eager"),
        peer_compiled_acts_per_second=rate.get("peer_compiled"),
        ratio_to_peer=None if best_peer is None else rate["landscape"] / best_peer,
        first_step_loss=first_losses, peer_errors=peer_errors)
  return results


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the configured sections; writes benchmark.json and returns its contents."""
  sections = [name for name in config.sections.split(",") if name]
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    raise training.ConfigError(f"config.sections={config.sections!r}: unknown {unknown}; "
                               f"expected some of {SECTIONS}")
  if "sae" in sections:
    check_sae_config(config.sae)
  steps_taken = config.warmup_steps + config.rounds * config.timed_steps
  if "transforms" in sections and steps_taken >= config.refresh_every:
    # The amortized ratio assumes that no step of the scheduled dictionary variant refreshes.
    raise training.ConfigError(
        f"config.refresh_every={config.refresh_every}: must exceed the {steps_taken} steps each "
        "variant takes (warmup_steps + rounds * timed_steps)")
  os.makedirs(workdir, exist_ok=True)
  device = jax.devices()[0]
  results: dict[str, Any] = dict(
      date=time.strftime("%Y-%m-%d"), jax_version=jax.__version__, backend=jax.default_backend(),
      device=getattr(device, "device_kind", str(device)), num_devices=jax.device_count(),
      host=platform.processor() or platform.machine(), config=json.loads(config.to_json_best_effort()))
  if "transforms" in sections:
    results["transforms"] = benchmark_transforms(config)
  if "updates" in sections:
    results["updates"] = benchmark_updates(config)
  if "seeds" in sections:
    results["seeds"] = benchmark_seeds(config, workdir)
  if "compile" in sections:
    results["compile"] = benchmark_compile(config)
  if "sae" in sections:
    results["sae"] = benchmark_sae(config.sae)
  training.write_json_atomically(os.path.join(workdir, "benchmark.json"), results)
  print(format_results(results))
  return results


def format_results(results: dict[str, Any]) -> str:
  lines = [f"{results['date']}  {results['device']} ({results['backend']})  jax {results['jax_version']}"]
  if "transforms" in results:
    lines.append(f"{'variant':66s} {'ms/step':>9s} {'ratio':>7s} {'tokens/s':>10s}")
    for name, row in results["transforms"].items():
      lines.append(f"{name:66s} {row['ms_per_step']:9.2f} {row['ratio_to_plain']:7.3f} "
                   f"{row['tokens_per_second']:10.0f}")
      if "ratio_with_refreshes_amortized" in row:
        lines.append(f"{'  with its refreshes amortized':66s} {'':9s} "
                     f"{row['ratio_with_refreshes_amortized']:7.3f}")
  if "updates" in results:
    lines.append(f"{'update alone':66s} {'ms':>9s} {'/ AdamW':>7s}")
    for name, row in results["updates"].items():
      lines.append(f"{name:66s} {row['ms_per_update']:9.3f} {row['ratio_to_adamw_update']:7.3f}")
  for num_runs, row in results.get("seeds", {}).items():
    lines.append(f"{num_runs} runs x {row['steps']} steps, one by one vs together: compiling "
                 f"{row['compiling_seconds_one_by_one']:.1f} s vs {row['compiling_seconds_together']:.1f} s "
                 f"= {row['compiling_speedup']:.1f}x; cache warm {row['cache_warm_seconds_one_by_one']:.1f} s "
                 f"vs {row['cache_warm_seconds_together']:.1f} s = {row['cache_warm_speedup']:.1f}x; per step "
                 f"once compiled {row['ms_per_step_one_run']:.3f} ms x {num_runs} vs "
                 f"{row['ms_per_step_together']:.3f} ms = {row['steady_state_speedup']:.2f}x; "
                 f"separate jobs {row['separate_jobs_seconds_one_by_one']:.1f} s vs "
                 f"{row['separate_jobs_seconds_together']:.1f} s = {row['separate_jobs_speedup']:.1f}x")
  for name, row in results.get("compile", {}).items():
    lines.append(f"compile {name} with {row['options'] or 'default options'}: compile "
                 f"{row['compile_seconds_loop']:.2f} s vs {row['compile_seconds_default']:.2f} s "
                 f"(ratio {row['compile_ratio']:.2f}), step ratio {row['step_ratio']:.3f}, params "
                 f"differ by {row['max_relative_param_difference']:.1e} (relative)")
  for d_sae, row in results.get("sae", {}).items():
    peer = (f"{row['peer']}: eager {row['peer_eager_acts_per_second']:.0f}/s, compiled "
            f"{_rate(row['peer_compiled_acts_per_second'])}; landscape / best peer "
            f"{row['ratio_to_peer']:.2f}x" if row["ratio_to_peer"] is not None else row["peer"])
    lines.append(f"SAE TopK {row['d_in']} x {d_sae}, k {row['k']}, batch {row['batch_size']}, "
                 f"{row['compute_dtype']}: landscape {row['landscape_acts_per_second']:.0f} "
                 f"activations/s; {peer}")
  return "\n".join(lines)


def _rate(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.0f}/s"
