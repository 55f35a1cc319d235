"""Benchmarks, measured as ratios taken in one run: ``run(config, workdir)``.

Two sections:

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
* ``compile``: the loop's chunk for the plain step and for each transform variant, compiled with
  XLA's default options and with the loop's (`training.compiler_options()`: on CPU,
  `training.CPU_COMPILER_OPTIONS`), alternately, each ``config.compile_rounds`` times with the
  persistent cache off: the ratio of compile times, of step times once compiled, and the largest
  difference between the parameters each reaches after the same steps.

Writes ``benchmark.json`` to ``workdir`` and prints a table.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
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
from landscape import training
from landscape import transforms

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
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


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the configured sections; writes benchmark.json and returns its contents."""
  sections = [name for name in config.sections.split(",") if name]
  unknown = sorted(set(sections) - {"transforms", "seeds", "compile"})
  if unknown:
    raise training.ConfigError(f"config.sections={config.sections!r}: unknown {unknown}; "
                               "expected some of 'transforms', 'seeds' and 'compile'")
  steps_taken = config.warmup_steps + config.rounds * config.timed_steps
  if steps_taken >= config.refresh_every:
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
  if "seeds" in sections:
    results["seeds"] = benchmark_seeds(config, workdir)
  if "compile" in sections:
    results["compile"] = benchmark_compile(config)
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
  return "\n".join(lines)
