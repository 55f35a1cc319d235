"""What is each update teaching? Concept attribution over SAE features, and selective
amplify/suppress: modular arithmetic (the skill, ``a + 1 = c`` mod 10) versus a pirate dialect (the
style).

  python -m experiments.concept_attribution --config=configs/concept_attribution.py \
      --workdir=workdirs/concept_attribution
  python -m experiments.concept_attribution --config=configs/concept_attribution.py:smoke \
      --workdir=/tmp/landscape/ca_smoke
  python -m experiments.concept_attribution --config=configs/concept_attribution.py:planted \
      --workdir=/tmp/landscape/ca_planted
  python -m experiments.concept_attribution --config=configs/concept_attribution.py:gpu \
      --workdir=workdirs/concept_attribution_gpu

Presets: "" (every arm, 5 seeds, a 2-layer GPT of width 32 and a 128-feature SAE; at most 15
minutes on a 2-core CPU), "smoke" (every arm, 2 seeds, a 1-layer GPT, a few steps, no timing of
the attribution's cost: mostly compilation, for tests), "planted" (the default with the style
absent from the fine-tuning data, the issue's planted setting: plain's style levels over the
random-feature levels in the report, span share minus the null level and the signed code change
minus the random control group's and the null level, are then the planted check, no style
attribution above the random-feature level; on 16 smoke seeds the tests find the signed check met
and the span-share one not, and ask of the span shares that the style's excess rise with the style
in the data, paired by seed), "gpu" (a 4-layer GPT of width 256, a 16,384-feature SAE at its
middle, a larger vocabulary and longer prose, 1,000 fine-tuning steps: sized for one GPU, not
tuned; its config is validated by the tests, never trained there).
Arms that differ only in which features their gains act on and in the gains train as one job (one
program); asking for one of them trains the whole job. Rerunning the same command resumes: the base
model, the SAEs and finished jobs are read back; a rerun with a different setting is refused.
"""

import ml_collections

from landscape.concept_attribution import ARMS


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_seeds = 5
  config.steps = 150                   # fine-tuning steps of every arm (long arms: long_factor x)
  config.batch_size = 32
  config.learning_rate = 3e-3          # Adam's, in fine-tuning
  config.evaluations = 5               # equally spaced evaluations of every run, and at step 0
  config.attribution_log_every = 5     # steps between logged attributions
  config.arms = ",".join(ARMS)
  config.site = "blocks.0.resid_post"  # the middle of the residual stream of a 2-layer GPT
  config.group_size = 8                # features per group (style, skill, and each control)
  config.null_groups = 32              # random groups, matched on activation to the style group,
                                       # whose mean span share is the null level
  # The parameters the gains and the attribution act on: "stream", every residual-stream site's
  # links (embeddings, every block's attention/MLP in and out, the tied unembedding: the residual
  # stream is one space); "site", config.site's own links only (the first runs').
  config.coverage = "stream"
  config.roles = "writes,reads"        # link roles the gains act at (the attribution: "writes")
  config.long_factor = 5
  config.eval_size = 256
  config.probe_size = 256              # examples of each labelling probe set
  config.probe_seed = 2_000_003
  config.source_batch_size = 64        # examples of each data source's attributed gradient
  config.decodability_steps = 200      # 0: no decodability probes
  config.code_change_examples = 32     # probe examples of the signed code-change attribution
  config.skill_threshold = 0.9         # the skill accuracy criterion 4 counts steps to
  config.overhead_repeats = 100        # timed steps of the attribution's cost (0: not measured)

  config.world = ml_collections.ConfigDict(dict(
      modulus=10, num_words=24, num_pirate=12, prose_length=6, seed=0,
      addend=1))  # a + 1 = c; -1: a + b = c, b uniform (not learned by this model in 1,200 steps)
  config.model = ml_collections.ConfigDict(dict(d_model=32, num_layers=2, num_heads=4))
  # The base model: plain text, sums present but their answers random (the skill absent).
  config.pretrain = ml_collections.ConfigDict(dict(
      steps=1500, batch_size=64, learning_rate=3e-3, arithmetic_rate=0.3, correct_rate=0.0,
      style_rate=0.0))
  config.sae = ml_collections.ConfigDict(dict(
      d_sae=128, k=8, steps=1500, batch_size=256, buffer_size=4096, model_batch_size=64,
      learning_rate=1e-3, num_seeds=3))
  # Fine-tuning: correct sums, each example in the pirate dialect with probability style_rate.
  # The answer's position weighs answer_weight in the loss (one position among 11, else).
  config.finetune = ml_collections.ConfigDict(dict(arithmetic_rate=1.0, style_rate=1.0,
                                                   answer_weight=2.0))
  config.grids = ml_collections.ConfigDict(dict(
      suppress=(0.0, -1.0), amplify=(3.0,), steering=(1.0,), concept_penalty=(1.0,)))
  # The live SAE of plain_live: the base SAE, `steps` more SAE steps every `every` steps.
  config.live = ml_collections.ConfigDict(dict(every=10, steps=2, batch_size=16,
                                               learning_rate=1e-3))

  if preset == "smoke":
    config.num_seeds = 2
    config.steps = 10
    config.batch_size = 8
    config.evaluations = 2
    config.attribution_log_every = 2
    config.group_size = 3
    config.null_groups = 16
    config.long_factor = 2
    config.eval_size = 32
    config.probe_size = 32
    config.source_batch_size = 8
    config.code_change_examples = 8
    config.decodability_steps = 10
    config.overhead_repeats = 0
    config.model.update(dict(d_model=16, num_layers=1, num_heads=2))
    config.pretrain.update(dict(steps=30, batch_size=16))
    config.sae.update(dict(d_sae=24, k=4, steps=40, batch_size=64, buffer_size=512,
                           model_batch_size=16, num_seeds=2))
    config.live.update(dict(every=5, steps=1, batch_size=4))
  elif preset == "gpu":
    # The speed clause: attribution over every feature of a 16,384-wide SAE, every step.
    config.steps = 1000
    config.batch_size = 128
    config.attribution_log_every = 10
    config.site = "blocks.1.resid_post"  # the middle of the residual stream of a 4-layer GPT
    config.world.update(dict(num_words=64, num_pirate=32, prose_length=10))
    config.model.update(dict(d_model=256, num_layers=4, num_heads=8))
    config.pretrain.update(dict(steps=5000, batch_size=256))
    config.sae.update(dict(d_sae=16_384, k=32, steps=5000, batch_size=4096, buffer_size=262_144,
                           model_batch_size=256))
    config.live.update(dict(every=50, steps=5, batch_size=64))
    config.group_size = 32
    config.probe_size = 1024
    config.eval_size = 1024
    config.source_batch_size = 256
    config.code_change_examples = 64
    config.decodability_steps = 500
  elif preset not in ("", "planted"):
    raise ValueError(f"configs/concept_attribution.py: unknown preset {preset!r}; expected smoke, "
                     "planted or gpu")
  if preset == "planted":
    config.finetune.style_rate = 0.0
  config.lock()
  return config
