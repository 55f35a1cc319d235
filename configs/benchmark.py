"""Benchmarks: gradient transforms on a GPT step, and seeds in one program against one by one.

  python -m experiments.benchmark --config=configs/benchmark.py --workdir=/tmp/landscape/bench_gpu
  python -m experiments.benchmark --config=configs/benchmark.py:cpu --workdir=/tmp/landscape/bench_cpu

SAE training throughput against a PyTorch peer (its own section, selected by name):

  python -m experiments.benchmark --config=configs/benchmark.py:gpu --config.sections=sae \
      --workdir=/tmp/landscape/bench_sae_gpu
  python -m experiments.benchmark --config=configs/benchmark.py:cpu --config.sections=sae \
      --workdir=/tmp/landscape/bench_sae_cpu

Presets: "" or "gpu" (GPT-2 small, T=1024, batch 16, bf16 compute, cuDNN attention; TopK SAEs of
768 x 16,384 and 768 x 65,536, k 32, batch 4,096, bf16: for an H100-class GPU), "cpu" (a small GPT
and the same ratios, minutes on a laptop; SAEs of 128 x 1,024 and 128 x 4,096, batch 512),
"smoke" (seconds; for tests). Figures go into BENCHMARKS.md with the date, device, JAX version and
this command.
"""

import ml_collections


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.sections = "transforms,updates,seeds"  # and "compile": the XLA options against defaults
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

  # SAE training throughput (section "sae"): TopK, Adam, landscape against a PyTorch peer.
  config.sae = ml_collections.ConfigDict()
  config.sae.d_in = 768
  config.sae.d_sae = (16384, 65536)
  config.sae.k = 32
  config.sae.batch_size = 4096        # activations per step
  config.sae.compute_dtype = "bfloat16"  # float32 parameters and Adam either way
  config.sae.learning_rate = 1e-4
  config.sae.warmup_steps = 3         # untimed; the first call compiles
  config.sae.steps = 50               # timed per round
  config.sae.rounds = 5
  config.sae.pool_batches = 8         # distinct batches cycled through
  config.sae.peer = "torch"           # "": landscape alone
  config.sae.peer_compile = True      # also time the peer under torch.compile

  if preset in ("cpu", "smoke"):
    config.model.update(dict(vocab_size=512, seq_len=128, d_model=128, num_layers=2, num_heads=4,
                             compute_dtype="float32", attention=""))
    config.batch_size = 8
    config.dictionary_selected = 32
    config.sae.update(dict(d_in=128, d_sae=(1024, 4096), batch_size=512, steps=10, rounds=3))
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
    config.sae.update(dict(d_in=16, d_sae=(64,), k=4, batch_size=32, warmup_steps=1, steps=2,
                           rounds=2, pool_batches=2, peer_compile=False))
  elif preset not in ("", "cpu", "gpu"):
    raise ValueError(f"configs/benchmark.py: unknown preset {preset!r}; expected gpu, cpu or smoke")
  config.lock()
  return config
