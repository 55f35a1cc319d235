"""report.md, its figures, summary.json and metrics.jsonl, computed from the arms' own files.

Four steps: load (every arm's grid points, read back: `load_results`), judge (the pre-registered
criteria, and the checks of the attribution beside them: does it name the features whose
activation rises, is the style's share above the random features' level, per data source),
figures, and markdown. Differences between arms pair runs by seed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from landscape import analysis
from landscape import training
from landscape.concept_attribution._arms import ARM_REGISTRY
from landscape.concept_attribution._criteria import POST_HOC
from landscape.concept_attribution._criteria import PREREGISTERED
from landscape.concept_attribution._criteria import Evidence
from landscape.concept_attribution._criteria import Verdict
from landscape.concept_attribution._criteria import evaluate_all
from landscape.concept_attribution._criteria import steps_to_threshold
from landscape.concept_attribution._measures import SOURCES
from landscape.concept_attribution._measures import group_shares
from landscape.concept_attribution._measures import rank_correlation
from landscape.concept_attribution._results import LOSS
from landscape.concept_attribution._results import SKILL_ACCURACY
from landscape.concept_attribution._results import STYLE_MARGIN
from landscape.concept_attribution._results import STYLE_RATE
from landscape.concept_attribution._results import ArmResult
from landscape.concept_attribution._results import find
from landscape.concept_attribution._results import load_results
from landscape.concept_attribution._setting import GROUPS
from landscape.concept_attribution._setting import Setting

DEFAULT_COMMAND = "landscape.concept_attribution.run(config, workdir)"
GROUP_COLORS = {"style": "firebrick", "skill": "royalblue", "other": "gray", "random": "seagreen"}


@dataclasses.dataclass(frozen=True)
class Checks:
  """The attribution's own checks (not criteria).

  rank_correlation: per seed of plain fine-tuning, Spearman's correlation over features between the
    attributed squared magnitude summed over training and the rise of the feature's mean code on
    the fine-tuning probe set (end minus start); ``abs``: against the size of the change.
  style_over_random: per seed of plain, the style group's share of the update minus the random
    group's (the same number of features), averaged over the logged steps: above zero, the style
    is attributed above the random features' level.
  sources: source -> group -> the group's share of that source's gradient, averaged over the
    evaluations, per seed of plain.
  live_style_share: the style group's share averaged over training, plain_live (None if not run).
  code_change_correlation: the same rank correlation for the signed attribution (the summed first-
    order code change against the rise), added after the first, aborted default run.
  code_change_style_in_top: per seed of plain, the style features among the top 5 by |summed code
    change| up to step 50 (criterion 1 asked of the signed attribution; not pre-registered).
  code_change_by_group: group -> the mean per feature of the summed code change, plain.
  """

  rank_correlation: analysis.Estimate | None
  rank_correlation_abs: analysis.Estimate | None
  style_over_random: analysis.Estimate | None
  sources: dict[str, dict[str, analysis.Estimate]]
  live_style_share: analysis.Estimate | None
  code_change_correlation: analysis.Estimate | None = None
  code_change_style_in_top: list[int] | None = None
  code_change_by_group: dict[str, analysis.Estimate] | None = None


def mean_group_share(result: ArmResult, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """group -> (S,) its share of the update, averaged over the logged steps."""
  _, share = result.attribution["share"]
  return {group: values.mean(axis=0) for group, values in group_shares(share, masks).items()}


def attribution_checks(results: Sequence[ArmResult], masks: dict[str, np.ndarray], *,
                       arm: str = "plain") -> Checks:
  """The checks of ``arm``'s attribution (plain fine-tuning in the report; ``oracle``, fine-tuned
  without the style, is the planted setting in which the style should not stand out)."""
  plain = find(results, arm)
  live = find(results, "plain_live")
  live_share = (None if live is None else
                analysis.mean_interval(mean_group_share(live, masks)["style"]))
  if plain is None:
    return Checks(None, None, None, {}, live_share)
  _, magnitude = plain.attribution["magnitude"]
  attributed = np.sum(np.square(magnitude), axis=0)       # (S, F)
  rise = plain.mean_code[-1] - plain.mean_code[0]         # (S, F)
  correlations = [rank_correlation(attributed[seed], rise[seed]) for seed in range(len(rise))]
  absolute = [rank_correlation(attributed[seed], np.abs(rise[seed])) for seed in range(len(rise))]
  shares = mean_group_share(plain, masks)
  sources = {}
  for source in SOURCES:
    sources[source] = {}
    for group in ("style", "skill", "other"):
      name = f"source/{source}/{group}"
      if name in plain.curves:
        sources[source][group] = analysis.mean_interval(plain.curves[name][1].mean(axis=0))
  code_checks = {}
  if "code_change" in plain.attribution:
    steps, code_change = plain.attribution["code_change"]
    summed = code_change.sum(axis=0)                      # (S, F)
    early = np.abs(code_change[steps <= min(50, plain.steps)].sum(axis=0))
    top = np.argsort(-early, axis=-1, kind="stable")[:, :5]
    code_checks = dict(
        code_change_correlation=analysis.mean_interval(
            [rank_correlation(summed[seed], rise[seed]) for seed in range(len(rise))]),
        code_change_style_in_top=masks["style"][top].sum(axis=-1).tolist(),
        code_change_by_group={group: analysis.mean_interval(summed[:, mask].mean(axis=-1))
                              for group, mask in masks.items()})
  return Checks(analysis.mean_interval(correlations), analysis.mean_interval(absolute),
                analysis.paired_difference(shares["style"], shares["random"]), sources,
                live_share, **code_checks)


def _cell(estimate: analysis.Estimate | None, spec: str = ".3f") -> str:
  if estimate is None:
    return "-"
  return f"{estimate.mean:{spec}} [{estimate.low:{spec}}, {estimate.high:{spec}}]"


def results_table(results: Sequence[ArmResult], masks: dict[str, np.ndarray],
                  threshold: float) -> str:
  lines = ["| arm | family | style rate | style margin (nats/token) | skill accuracy | held-out "
           f"loss | style share of update | skill share | steps to skill {threshold:g} |",
           "|---|---|---|---|---|---|---|---|---|"]
  for result in results:
    shares = mean_group_share(result, masks)
    steps = analysis.mean_interval(steps_to_threshold(result, threshold))
    lines.append(
        f"| {result.label} | {result.family} | {_cell(result.estimate(STYLE_RATE))} | "
        f"{_cell(result.estimate(STYLE_MARGIN), '.2f')} | "
        f"{_cell(result.estimate(SKILL_ACCURACY))} | {_cell(result.estimate(LOSS))} | "
        f"{_cell(analysis.mean_interval(shares['style']))} | "
        f"{_cell(analysis.mean_interval(shares['skill']))} | {_cell(steps, '.0f')} |")
  return "\n".join(lines)


def arm_lines(results: Sequence[ArmResult]) -> list[str]:
  """One line per arm run: its name, family and what it does (`Arm.description`)."""
  arms = dict.fromkeys(result.arm for result in results)
  return [f"- `{arm}` ({ARM_REGISTRY[arm].family}): {ARM_REGISTRY[arm].description}."
          for arm in arms]


def decodability_table(results: Sequence[ArmResult]) -> str:
  with_sites = [result for result in results if result.sites()]
  if not with_sites:
    return "(not measured: config.decodability_steps = 0)"
  sites = with_sites[0].sites()
  lines = ["| arm | " + " | ".join(f"`{site}`" for site in sites) + " |",
           "|---|" + "---|" * len(sites)]
  for result in with_sites:
    cells = [f"{result.estimate(f'decodability/{site}').mean:.2f}" for site in sites]
    lines.append(f"| {result.label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _band(axis, steps, values, color, label, linestyle="-"):
  estimates = [analysis.mean_interval(row) for row in values]
  axis.plot(steps, [e.mean for e in estimates], color=color, label=label, linestyle=linestyle)
  axis.fill_between(steps, [e.low for e in estimates], [e.high for e in estimates], color=color,
                    alpha=0.15, linewidth=0)


def figure_attribution(results: Sequence[ArmResult], masks: dict[str, np.ndarray], path: str
                       ) -> None:
  """Per arm (plain, plain_live, suppress, suppress_live, amplify, when run): each group's share
  of the update
  over training, mean over seeds with its 95% band."""
  shown = [result for result in (find(results, arm) for arm in
                                 ("plain", "plain_live", "suppress", "suppress_live",
                                  "amplify")) if result]
  figure = Figure(figsize=(4.5 * max(len(shown), 1), 3.8))
  axes = figure.subplots(1, max(len(shown), 1), squeeze=False)[0]
  for axis, result in zip(axes, shown):
    steps, share = result.attribution["share"]
    for group, values in group_shares(share, masks).items():
      _band(axis, steps, values, GROUP_COLORS[group], group,
            linestyle=":" if group == "random" else "-")
    axis.set_title(f"{result.label}: share of the update", fontsize=9)
    axis.set_xlabel("step")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
  axes[-1].legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def figure_sources(results: Sequence[ArmResult], path: str) -> None:
  """Plain fine-tuning: each group's share of the gradient of each data source's batch."""
  plain = find(results, "plain")
  figure = Figure(figsize=(4.5 * len(SOURCES), 3.8))
  axes = figure.subplots(1, len(SOURCES), squeeze=False)[0]
  for axis, source in zip(axes, SOURCES):
    for group in ("style", "skill", "other"):
      name = f"source/{source}/{group}"
      if plain is not None and name in plain.curves:
        _band(axis, *plain.curves[name], GROUP_COLORS[group], group)
    axis.set_title(f"plain: gradient of {source} batches", fontsize=9)
    axis.set_xlabel("step")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
  axes[-1].legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def figure_style_and_skill(results: Sequence[ArmResult], path: str) -> None:
  figure = Figure(figsize=(11, 4.2))
  axes = figure.subplots(1, 2, squeeze=False)[0]
  palette = [f"C{index}" for index in range(10)]
  for index, result in enumerate(results):
    for axis, metric in zip(axes, (STYLE_RATE, SKILL_ACCURACY)):
      if metric in result.curves:
        _band(axis, *result.curves[metric], palette[index % 10], result.label,
              linestyle="-" if index < 10 else "--")
  for axis, label in zip(axes, ("style rate", "skill accuracy")):
    axis.set_xlabel("step")
    axis.set_ylabel(label)
    axis.grid(alpha=0.3)
  axes[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def _setting_lines(setting: Setting, config: ml_collections.ConfigDict) -> list[str]:
  groups, stability, sae = setting.groups, setting.stability, setting.sae_metrics
  addend = config.world.addend
  problem = "`a + b = c`, b uniform" if addend < 0 else f"`a + {addend} = c`"
  lines = [
      f"Setting: modular addition mod {config.world.modulus} ("
      f"{problem}) and a pirate dialect "
      f"(separator `ARR` for `.`, {config.world.num_pirate} of {config.world.num_words} words "
      f"substituted). Base GPT ({config.model.num_layers} layers, width {config.model.d_model}) "
      f"pre-trained {config.pretrain.steps} steps on plain text whose sums have random answers. "
      f"TopK SAE ({config.sae.d_sae} features, k = {config.sae.k}) at `{setting.site}`, trained "
      f"on the base model's activations over text of both dialects: FVE "
      f"{sae.fve:.3f}, L0 {sae.l0:.1f}, dead fraction "
      f"{sae.dead_fraction:.3f}. Fine-tuning: {config.steps} steps of correct "
      f"sums, styled with probability {config.finetune.style_rate:g}.", "",
      f"Labelling: the {config.group_size} features of highest paired t statistic of their mean "
      "code, pirate minus plain (one content in both dialects), are the style group; of the rest, "
      "the highest Welch t statistic, correct sums against no arithmetic, the skill group. Style "
      f"features {groups.style.tolist()}, skill {groups.skill.tolist()}, random control "
      f"{groups.random.tolist()}, activation-only control {groups.by_activation.tolist()}."]
  if stability.style is not None and stability.skill is not None:
    lines += ["", f"Stability across {stability.num_saes} SAE seeds: mean over the first SAE's "
              "style features of the largest |cosine| with another seed's style features "
              f"{stability.style.matched_cosine:.3f} (with its random features: "
              f"{stability.style.random_cosine:.3f}); skill "
              f"{stability.skill.matched_cosine:.3f} (random "
              f"{stability.skill.random_cosine:.3f})."]
  return lines


def _checks_lines(checks: Checks) -> list[str]:
  lines = ["## Does the attribution mean something?", "",
           "- Rank correlation (Spearman, over features, per seed of plain fine-tuning) between "
           "the attributed squared magnitude summed over training and the rise of the feature's "
           f"mean code on the fine-tuning probe set: {_cell(checks.rank_correlation)}; with the "
           f"size of the change: {_cell(checks.rank_correlation_abs)}.",
           "- Style group's share of the update minus the random group's (as many features), "
           f"plain, averaged over training (paired): {_cell(checks.style_over_random, '.4f')}.",
           f"- With a live SAE (`plain_live`), the style group's share: "
           f"{_cell(checks.live_style_share, '.4f')}.",
           "- Signed attribution (the first-order change of each feature's code on the probe "
           "examples, config.code_change_examples, that each update makes; added after the first, "
           "aborted default run, not "
           "pre-registered): rank correlation of its sum over training with the rise of the mean "
           f"code {_cell(checks.code_change_correlation)}; style features among its top 5 by step "
           f"50, per seed: {checks.code_change_style_in_top}; mean summed code change per feature "
           "by group: " + ", ".join(f"{group} {_cell(value, '.4f')}" for group, value in
                                    (checks.code_change_by_group or {}).items()) + ".", "",
           "Per data source (plain; the gradient each source's fixed batch gives, averaged over "
           "the evaluations):", "", "| source | style | skill | other |", "|---|---|---|---|"]
  for source, by_group in checks.sources.items():
    lines.append(f"| {source} | " + " | ".join(_cell(by_group.get(group), ".4f")
                                               for group in ("style", "skill", "other")) + " |")
  return lines


def _block_lines(results: Sequence[ArmResult]) -> list[str]:
  """Suppression as a block in update space, beside the reshaping and activation arms."""
  suppress = find(results, "suppress", {"style_gain": 0.0})
  lines = ["## Suppression as a block", "",
           "Suppressing the update's components along the style features is a block in update "
           "space (the flagship's `project_*` arms at the level of SAE features). Style rate, style "
           "margin and skill accuracy of each alternative minus suppression's, paired by seed:", ""]
  if suppress is None:
    return lines + ["(suppress was not run)"]
  for arm in ("suppress_live", "ablate", "steering", "concept_penalty"):
    other = find(results, arm, {"style_gain": 0.0} if arm == "suppress_live" else None)
    if other is None:
      continue
    style = analysis.paired_difference(other.final[STYLE_RATE], suppress.final[STYLE_RATE])
    margin = analysis.paired_difference(other.final[STYLE_MARGIN], suppress.final[STYLE_MARGIN])
    skill = analysis.paired_difference(other.final[SKILL_ACCURACY],
                                       suppress.final[SKILL_ACCURACY])
    lines.append(f"- `{other.label}` minus `{suppress.label}`: style rate {style:+.3f}, style "
                 f"margin {margin:+.2f}, skill accuracy {skill:+.3f}.")
  return lines


def markdown(results: Sequence[ArmResult], verdicts: Sequence[Verdict],
             post_hoc: Sequence[Verdict], checks: Checks, *,
             setting: Setting, config: ml_collections.ConfigDict, masks: dict[str, np.ndarray],
             seconds: float, device: str, command: str, overhead: dict[str, float] | None) -> str:
  lines = ["# What is each update teaching? Concept attribution over SAE features", "",
           f"Command: `{command}`", "",
           f"{config.num_seeds} seeds per arm; the arms of one job (arms that differ only in "
           "which features their gains act on and in the gains) trained together, every seed "
           "and grid point in one compiled program, warm-started from one base model; means "
           "with 95% t-intervals over seeds. "
           f"Wall time of this invocation {seconds:.0f} s on {device} "
           "(parts finished by an earlier invocation are read back, not retrained).", "",
           *_setting_lines(setting, config), "",
           "Attribution (`transforms.attribute` over the SAE's decoder as a dictionary, after "
           "the arm's gains: the update applied): U stacks the update's vectors along the "
           "site's axis of every matrix and bias that writes into the site; feature k's "
           "magnitude is ||U d_k||, the update projected onto its decoder row d_k, and its share "
           "||U d_k||^2 / (||U||^2 ||d_k||^2). Each feature is measured on its own row: this is "
           "neither a decomposition of the update into a sum over features (the rows are "
           "overcomplete and not orthogonal, so the shares of all features need not sum to 1) "
           "nor the SAE's encoder. Logged every "
           f"{config.attribution_log_every} steps; a group's share is the sum of its features' "
           "shares. Style rate: the fraction of held-out arithmetic "
           "prompts (a correct sum) whose styled continuation the model finds more probable than "
           "the plain one; style margin: the mean log-probability difference per scored token.", "",
           "Criteria (pre-registered): " + "; ".join(
               f"{criterion.name.split('.')[0]}. {criterion.describe()}"
               for criterion in PREREGISTERED)
           + f". Skill threshold: accuracy {config.skill_threshold:g}.", "",
           results_table(results, masks, config.skill_threshold), "",
           *arm_lines(results), "", "Criteria:", ""]
  lines += [f"- {verdict.sentence}" for verdict in verdicts]
  lines += ["", "Post hoc, declared (not pre-registered): criteria "
            + ", ".join(criterion.name.split(".")[0] for criterion in POST_HOC)
            + " are criteria 2, 3 and 5 with their pre-registered bounds, judged on the style "
            "margin gained over the base model (each run's margin minus its margin at step 0) "
            f"instead of the style rate; {POST_HOC[0].post_hoc}. The margin does not saturate. "
            "The pre-registered judgements above stand as they are:", ""]
  lines += [f"- {verdict.sentence}" for verdict in post_hoc]
  lines += ["", *_checks_lines(checks), "", *_block_lines(results), "",
            "## Decodability of the style after fine-tuning", "",
            "Held-out accuracy of a linear probe for the dialect at the last position (chance "
            "0.5), at every site:", "", decodability_table(results), "",
            "![attribution over training](attribution.png)", "",
            "![per data source](sources.png)", "",
            "![style and skill over training](style_and_skill.png)", ""]
  if overhead is not None:
    lines += ["## Cost of the attribution", "",
              f"A fine-tuning step of one run with the decoder-row attribution over all "
              f"{setting.sae.d_sae} features took {overhead['ratio']:.3f}x a step without it "
              f"({overhead['with_ms']:.2f} ms vs {overhead['without_ms']:.2f} ms); with the signed "
              f"code-change attribution too, {overhead['ratio_both']:.3f}x "
              f"({overhead['with_both_ms']:.2f} ms); median of {config.overhead_repeats} steps "
              f"each, timed in turn, on {device}, measured after the arms (other processes on "
              "the machine count).", ""]
  return "\n".join(lines) + "\n"


def _device() -> str:
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  return f"{jax.device_count()} x {kind}, jax {jax.__version__}"


def write(config: ml_collections.ConfigDict, workdir: str, *, setting: Setting, arms: list[str],
          seconds: float, command: str | None = None,
          overhead: dict[str, float] | None = None) -> dict[str, Any]:
  """Writes report.md, the figures, summary.json and metrics.jsonl; returns the summary."""
  results = load_results(workdir, arms, setting.site, config)
  masks = {group: mask for group, mask in setting.groups.masks(setting.sae.d_sae).items()
           if group in GROUPS + ("random",)}
  evidence = Evidence(results, masks, config.skill_threshold)
  verdicts = evaluate_all(evidence)
  post_hoc = evaluate_all(evidence, POST_HOC)
  checks = attribution_checks(results, masks)
  figure_attribution(results, masks, os.path.join(workdir, "attribution.png"))
  figure_sources(results, os.path.join(workdir, "sources.png"))
  figure_style_and_skill(results, os.path.join(workdir, "style_and_skill.png"))
  text = markdown(results, verdicts, post_hoc, checks, setting=setting, config=config, masks=masks,
                  seconds=seconds, device=_device(), command=command or DEFAULT_COMMAND,
                  overhead=overhead)
  with open(os.path.join(workdir, "report.md"), "w") as handle:
    handle.write(text)
  estimate = lambda value: None if value is None else dataclasses.asdict(value)
  summary = {
      "seconds": seconds, "num_seeds": config.num_seeds,
      "criteria": [verdict.as_dict() for verdict in verdicts],
      "post_hoc_criteria": [verdict.as_dict() for verdict in post_hoc],
      "groups": setting.groups.as_dict(), "stability": dataclasses.asdict(setting.stability),
      "sae": dataclasses.asdict(setting.sae_metrics), "overhead": overhead,
      "checks": {"rank_correlation": estimate(checks.rank_correlation),
                 "code_change_correlation": estimate(checks.code_change_correlation),
                 "code_change_style_in_top": checks.code_change_style_in_top,
                 "code_change_by_group": {group: estimate(value) for group, value in
                                          (checks.code_change_by_group or {}).items()},
                 "rank_correlation_abs": estimate(checks.rank_correlation_abs),
                 "style_over_random": estimate(checks.style_over_random),
                 "live_style_share": estimate(checks.live_style_share),
                 "sources": {source: {group: estimate(value) for group, value in by_group.items()}
                             for source, by_group in checks.sources.items()}},
      "arms": {result.label: {"arm": result.arm, "family": result.family, "point": result.point,
                              "seeds": result.seeds,
                              "style_rate": estimate(result.estimate(STYLE_RATE)),
                              "style_margin": estimate(result.estimate(STYLE_MARGIN)),
                              "skill_accuracy": estimate(result.estimate(SKILL_ACCURACY)),
                              "loss": estimate(result.estimate(LOSS))}
               for result in results}}
  training.write_json_atomically(os.path.join(workdir, "summary.json"), summary)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as handle:
    for result in results:
      row = {"arm": result.arm, "point": result.point, "seeds": result.seeds,
             **{name: values.tolist() for name, values in result.final.items()}}
      handle.write(json.dumps(row) + "\n")
  return summary
