"""Steering and in-context learning: the exchange rate between a steering magnitude and shots.

  python -m experiments.steering_icl --config=configs/steering_icl.py \
      --workdir=workdirs/steering_icl
  python -m experiments.steering_icl --config=configs/steering_icl.py:smoke \
      --workdir=/tmp/landscape/steering_icl_smoke
  python -m experiments.steering_icl --config=configs/steering_icl.py:gpu \
      --workdir=workdirs/steering_icl_gpu

Presets: "" (4 GINC concepts, a 2-layer GPT, 5 seeds, N up to 16, four steering vectors including
an SAE feature; about 6 minutes on a 2-core CPU), "smoke" (2 seeds, a 1-layer GPT, a few steps, a
tiny SAE, a small grid: seconds, for tests), "gpu" (8 concepts, a 4-layer GPT of width 256, N up to
64, SAEs of 2048 latents; untuned, not yet run). Rerunning the same command resumes training and
remeasures; a rerun with a different config in the same --workdir is refused.
"""

import ml_collections

from landscape import training


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = training.loop_config()
  config.seed = 0
  config.num_seeds = 5
  config.steps = 1500
  config.batch_size = 24
  config.log_every = 250
  config.eval_every = 750
  config.checkpoint_every = 750
  config.steps_per_call = 250
  config.tensorboard = False
  config.optimizer = training.optimizer_config(learning_rate=3e-3, warmup_steps=100,
                                               schedule="cosine", grad_clip=1.0)

  # GINC's construction (p-lambda/incontext-learning), scaled down; see landscape.data.ginc_mixture.
  config.mixture = ml_collections.ConfigDict(dict(
      num_concepts=4, num_values=4, num_slots=4, vocab_size=16, transition_temperature=1.0,
      start_temperature=10.0, value_identity=0.9, smoothing=0.2, seed=0))
  config.seq_len = 56               # training documents' length (the prompts must fit)
  config.eval_size = 256
  config.model = ml_collections.ConfigDict(dict(d_model=48, num_layers=2, num_heads=4))

  # Prompts: N shots of `shot_concept` (each `shot_length` tokens from a delimiter), then a query of
  # `query_length` tokens of `target_concept`; the behaviour is the model's log-odds of the target.
  config.prompts = ml_collections.ConfigDict(dict(
      num_prompts=64, num_groups=4, shot_length=3, query_length=3, shots=(0, 1, 2, 3, 4, 6, 8, 12, 16),
      target_concept=0, shot_concept=1, vector_shots=4, seed=12345))
  # Steering: at each layer's `site_kind`, the read-out position, m in units of the site's mean
  # activation norm; kinds: difference of means, the vector built from shots, a random control,
  # an SAE feature's decoder row.
  config.steering = ml_collections.ConfigDict(dict(
      site_kind="resid_post", magnitudes=(-1.0, -0.6, -0.3, 0.0, 0.3, 0.6, 1.0),
      kinds="diff_of_means,shots,random,sae", num_documents=128))
  # The SAE kind: a TopK SAE per seed and site on `num_documents` documents of every concept (every
  # position a row); the feature whose mean code best tells documents of c from c' (AUROC) is used.
  config.sae = ml_collections.ConfigDict(dict(
      d_sae=192, k=4, steps=2000, batch_size=256, learning_rate=1e-3, warmup_steps=100,
      num_documents=256))
  config.num_bootstrap = 100
  config.criteria = "preregistered"

  for name in filter(None, preset.split(",")):
    if name == "smoke":
      config.num_seeds = 2
      config.steps = 20
      config.log_every = 10
      config.eval_every = 10
      config.checkpoint_every = 20
      config.steps_per_call = 10
      config.optimizer.warmup_steps = 0
      config.seq_len = 32
      config.eval_size = 32
      config.model.update(dict(d_model=16, num_heads=2, num_layers=1))
      config.prompts.update(dict(num_prompts=8, num_groups=2, shot_length=3, query_length=2,
                                 shots=(0, 1, 2), vector_shots=2))
      config.steering.magnitudes = (-1.0, 0.0, 1.0)
      config.steering.num_documents = 8
      config.sae.update(dict(d_sae=16, k=2, steps=20, batch_size=32, warmup_steps=0,
                             num_documents=8))
      config.num_bootstrap = 10
    elif name == "gpu":
      config.steps = 20000
      config.batch_size = 64
      config.mixture.update(dict(num_concepts=8, num_values=6, num_slots=6, vocab_size=32))
      config.seq_len = 384
      config.model.update(dict(d_model=256, num_layers=4, num_heads=8))
      config.prompts.update(dict(num_prompts=256, num_groups=8,
                                 shots=(0, 1, 2, 4, 8, 12, 16, 24, 32, 48, 64), vector_shots=8))
      config.steering.num_documents = 512
      config.sae.update(dict(d_sae=2048, k=16, steps=4000, batch_size=1024, learning_rate=3e-4,
                             warmup_steps=200, num_documents=256))
    else:
      raise ValueError(f"configs/steering_icl.py: unknown preset {name!r}; expected smoke or gpu")
  config.lock()
  return config
