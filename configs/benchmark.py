"""Benchmarks: gradient transforms on a GPT step, and seeds in one program against one by one.

  python -m experiments.benchmark --config=configs/benchmark.py --workdir=/tmp/landscape/bench_gpu
  python -m experiments.benchmark --config=configs/benchmark.py:cpu --workdir=/tmp/landscape/bench_cpu

Presets: "" (GPT-2 small, T=1024, batch 16, bf16 compute, cuDNN attention: for an H100-class GPU),
"cpu" (a small GPT and the same ratios, minutes on a laptop), "smoke" (seconds; for tests).
Figures go into BENCHMARKS.md with the date, device, JAX version and this command.
"""

import ml_collections


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.sections = "transforms,seeds"   # and "compile": the loop's XLA options against defaults
  config.compile_rounds = 3

  config.model = ml_collections.ConfigDict()
  config.model.vocab_size = 50304
  config.model.seq_len = 1024
  config.model.d_model = 768
  config.model.num_layers = 12
  config.model.num_heads = 12
  config.model.compute_dtype = "bfloat16"
  config.model.attention = "cudnn"   # "" lets JAX choose
  config.model.scan_layers = False

  config.batch_size = 16
  config.learning_rate = 3e-4
  config.warmup_steps = 3
  config.timed_steps = 10
  config.rounds = 9
  config.num_directions = (16, 64)
  config.dictionary_size = 16384
  config.dictionary_selected = 256
  config.refresh_every = 100

  config.seeds = ml_collections.ConfigDict()
  config.seeds.num_runs = (5, 15)     # 5 seeds; 5 seeds x 3 grid points, as in the flagship
  config.seeds.steps = 1000
  config.seeds.batch_size = 64
  config.seeds.hidden_sizes = (64, 64)
  config.seeds.steps_per_call = 50
  config.seeds.timed_calls = 10

  if preset in ("cpu", "smoke"):
    config.model.update(dict(vocab_size=512, seq_len=128, d_model=128, num_layers=2, num_heads=4,
                             compute_dtype="float32", attention=""))
    config.batch_size = 8
    config.dictionary_selected = 32
  if preset == "smoke":
    config.model.update(dict(vocab_size=64, seq_len=16, d_model=32, num_heads=2))
    config.dictionary_size = 256
    config.dictionary_selected = 8
    config.num_directions = (4,)
    config.warmup_steps = 1
    config.timed_steps = 2
    config.rounds = 2
    config.compile_rounds = 1
    config.seeds.update(dict(num_runs=(2,), steps=20, steps_per_call=10, timed_calls=2))
  elif preset not in ("", "cpu"):
    raise ValueError(f"configs/benchmark.py: unknown preset {preset!r}; expected cpu or smoke")
  config.lock()
  return config
