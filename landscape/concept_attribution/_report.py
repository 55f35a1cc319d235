"""report.md, its figures, summary.json and metrics.jsonl, computed from the arms' own files.

Four steps: load (every arm's grid points, read back: `load_results`), judge (the pre-registered
criteria, the declared post-hoc ones, and the checks of the attribution beside them: does it name
the features whose activation rises, is the style's span share above the null level and the
oracle's, per data source), figures, and markdown. Differences between arms pair runs by seed;
decodability is reported minus the oracle's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from landscape import analysis
from landscape import training
from landscape.concept_attribution._arms import ARM_REGISTRY
from landscape.concept_attribution._arms import roles_of
from landscape.concept_attribution._criteria import DECLARED
from landscape.concept_attribution._criteria import POST_HOC
from landscape.concept_attribution._criteria import PREREGISTERED
from landscape.concept_attribution._criteria import Evidence
from landscape.concept_attribution._criteria import TopFeatureBounds
from landscape.concept_attribution._criteria import Verdict
from landscape.concept_attribution._criteria import evaluate_all
from landscape.concept_attribution._criteria import mean_span_shares
from landscape.concept_attribution._criteria import steps_to_threshold
from landscape.concept_attribution._measures import SHARE_NAMES
from landscape.concept_attribution._measures import SOURCES
from landscape.concept_attribution._measures import group_span_shares
from landscape.concept_attribution._measures import rank_correlation
from landscape.concept_attribution._results import LOSS
from landscape.concept_attribution._results import SKILL_ACCURACY
from landscape.concept_attribution._results import STYLE_MARGIN
from landscape.concept_attribution._results import STYLE_RATE
from landscape.concept_attribution._results import ArmResult
from landscape.concept_attribution._results import find
from landscape.concept_attribution._results import load_results
from landscape.concept_attribution._setting import FEATURE_SETS
from landscape.concept_attribution._setting import GroupMasks
from landscape.concept_attribution._setting import Setting
from landscape.concept_attribution._setting import coverage_links

DEFAULT_COMMAND = "landscape.concept_attribution.run(config, workdir)"
GROUP_COLORS = {"style": "firebrick", "skill": "royalblue", "other": "gray", "random": "seagreen",
                "by_activation": "darkorange", "null": "black"}
DOTTED = ("random", "by_activation", "null")  # the reference levels, drawn dotted
# Criterion 1's numbers: the signed attribution's check asks its question of the other measure.
TOP_FEATURES = next(criterion.bounds for criterion in PREREGISTERED
                    if isinstance(criterion.bounds, TopFeatureBounds))


class CodeChangeExcess(NamedTuple):
  """The signed attribution's style level over the random-feature levels, paired by seed: the style
  group's summed code change per feature (over training) minus the random control group's
  (``over_random``) and minus the null level's (``over_null``, the mean over the null groups; None
  without null groups)."""

  over_random: analysis.Estimate
  over_null: analysis.Estimate | None


def code_change_excess(result: ArmResult, masks: GroupMasks,
                       null_groups: np.ndarray | None) -> CodeChangeExcess | None:
  """`CodeChangeExcess` of ``result`` (None if it logged no code change)."""
  if "code_change" not in result.attribution:
    return None
  summed = result.attribution["code_change"][1].sum(axis=0)            # (S, F)
  style = summed[:, masks.style].mean(axis=-1)
  over_null = None
  if null_groups is not None and len(null_groups):
    null = summed[:, np.asarray(null_groups)].mean(axis=-1).mean(axis=-1)
    over_null = analysis.paired_difference(style, null)
  return CodeChangeExcess(analysis.paired_difference(style, summed[:, masks.random].mean(axis=-1)),
                          over_null)


@dataclasses.dataclass(frozen=True)
class Checks:
  """The attribution's own checks (not criteria).

  rank_correlation: per seed of plain fine-tuning, Spearman's correlation over features between the
    attributed squared magnitude summed over training and the rise of the feature's mean code on
    the fine-tuning probe set (end minus start); ``abs``: against the size of the change.
  style_over_null: per seed of plain, the style group's span share of the update minus the
    null level (the mean over the null groups, random groups matched on activation to the style
    group), averaged over the logged steps (paired).
  oracle_style_share: the style group's span share of the oracle's update (the same examples
    without the style: the no-style reference); style_over_oracle: plain's minus it, paired;
    oracle_over_null: the oracle's style share minus its own null level, paired (the issue's
    planted setting, the style absent from the fine-tuning data, against the random-feature
    level).
  oracle_code_change_excess: the planted check on the signed attribution: the oracle's
    `CodeChangeExcess`; code_change_excess: plain's (the style in the data), beside it.
  sources: source -> feature set -> its span share of that source's gradient, averaged over the
    evaluations, per seed of plain.
  live_style_share: the style group's span share averaged over training, plain_live, along the
    live SAE's current spans (None if not run); live_minus_plain: it minus plain's (along the base
    SAE's spans; the same updates at gain 1), paired; live_null: plain_live's null level along the
    live spans.
  code_change_correlation: the same rank correlation for the signed attribution (the summed first-
    order code change against the rise).
  code_change_style_in_top: per seed of plain, the style features among criterion 1's top
    features by |summed code change| up to its step (criterion 1 asked of the signed attribution;
    not pre-registered).
  code_change_by_group: group -> the mean per feature of the summed code change, plain.
  """

  rank_correlation: analysis.Estimate | None
  rank_correlation_abs: analysis.Estimate | None
  style_over_null: analysis.Estimate | None
  sources: dict[str, dict[str, analysis.Estimate]]
  live_style_share: analysis.Estimate | None
  live_minus_plain: analysis.Estimate | None = None
  live_null: analysis.Estimate | None = None
  oracle_style_share: analysis.Estimate | None = None
  style_over_oracle: analysis.Estimate | None = None
  oracle_over_null: analysis.Estimate | None = None
  code_change_correlation: analysis.Estimate | None = None
  code_change_style_in_top: list[int] | None = None
  code_change_by_group: dict[str, analysis.Estimate] | None = None
  code_change_excess: CodeChangeExcess | None = None
  oracle_code_change_excess: CodeChangeExcess | None = None


def attribution_checks(results: Sequence[ArmResult], masks: GroupMasks, *,
                       null_groups: np.ndarray | None = None, arm: str = "plain",
                       reference: str = "oracle") -> Checks:
  """The checks of ``arm``'s attribution (plain fine-tuning in the report), with ``reference``'s
  style share as the no-style level (the oracle: fine-tuned on the same examples without the
  style); ``null_groups``: (K, G) feature indices, the null groups whose mean is the signed
  attribution's null level (None: no null level)."""
  plain = find(results, arm)
  live = find(results, "plain_live")
  live_shares = None if live is None else mean_span_shares(live)
  live_share = None if live is None else analysis.mean_interval(live_shares.style)
  if plain is None:
    return Checks(None, None, None, {}, live_share)
  _, magnitude = plain.attribution["magnitude"]
  attributed = np.sum(np.square(magnitude), axis=0)       # (S, F)
  rise = plain.mean_code[-1] - plain.mean_code[0]         # (S, F)
  correlations = [rank_correlation(attributed[seed], rise[seed]) for seed in range(len(rise))]
  absolute = [rank_correlation(attributed[seed], np.abs(rise[seed])) for seed in range(len(rise))]
  shares = mean_span_shares(plain)
  live_checks = {}
  if live is not None and live.seeds == plain.seeds:
    live_checks = dict(live_minus_plain=analysis.paired_difference(live_shares.style,
                                                                   shares.style),
                       live_null=analysis.mean_interval(live_shares.null))
  oracle = find(results, reference)
  oracle_checks = {}
  if oracle is not None and oracle.seeds == plain.seeds:
    oracle_shares = mean_span_shares(oracle)
    oracle_share = oracle_shares.style
    oracle_checks = dict(
        oracle_over_null=analysis.paired_difference(oracle_share, oracle_shares.null),
        oracle_style_share=analysis.mean_interval(oracle_share),
        style_over_oracle=analysis.paired_difference(shares.style, oracle_share),
        oracle_code_change_excess=code_change_excess(oracle, masks, null_groups))
  sources = {}
  for source in SOURCES:
    sources[source] = {}
    for name in SHARE_NAMES:
      metric = f"source/{source}/{name}"
      if metric in plain.curves:
        sources[source][name] = analysis.mean_interval(plain.curves[metric][1].mean(axis=0))
  code_checks = {}
  if "code_change" in plain.attribution:
    steps, code_change = plain.attribution["code_change"]
    summed = code_change.sum(axis=0)                      # (S, F)
    early = np.abs(code_change[steps <= min(TOP_FEATURES.by_step, plain.steps)].sum(axis=0))
    top = np.argsort(-early, axis=-1, kind="stable")[:, :TOP_FEATURES.top]
    code_checks = dict(
        code_change_correlation=analysis.mean_interval(
            [rank_correlation(summed[seed], rise[seed]) for seed in range(len(rise))]),
        code_change_style_in_top=masks.style[top].sum(axis=-1).tolist(),
        code_change_by_group={group: analysis.mean_interval(summed[:, mask].mean(axis=-1))
                              for group, mask in dataclasses.asdict(masks).items()},
        code_change_excess=code_change_excess(plain, masks, null_groups))
  return Checks(analysis.mean_interval(correlations), analysis.mean_interval(absolute),
                analysis.paired_difference(shares.style, shares.null), sources,
                live_share, **live_checks, **oracle_checks, **code_checks)


def _cell(estimate: analysis.Estimate | None, spec: str = ".3f") -> str:
  if estimate is None:
    return "-"
  return f"{estimate.mean:{spec}} [{estimate.low:{spec}}, {estimate.high:{spec}}]"


def results_table(results: Sequence[ArmResult], threshold: float) -> str:
  lines = ["| arm | family | style rate | style margin (nats/token) | skill accuracy | held-out "
           "loss | style span share | skill span share | random control's | null level | steps "
           f"to skill {threshold:g} |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for result in results:
    shares = mean_span_shares(result)
    steps = analysis.mean_interval(steps_to_threshold(result, threshold))
    lines.append(
        f"| {result.label} | {result.family} | {_cell(result.estimate(STYLE_RATE))} | "
        f"{_cell(result.estimate(STYLE_MARGIN), '.2f')} | "
        f"{_cell(result.estimate(SKILL_ACCURACY))} | {_cell(result.estimate(LOSS))} | "
        f"{_cell(analysis.mean_interval(shares.style))} | "
        f"{_cell(analysis.mean_interval(shares.skill))} | "
        f"{_cell(analysis.mean_interval(shares.random))} | "
        f"{_cell(analysis.mean_interval(shares.null))} | "
        f"{_cell(steps, '.0f')} |")
  return "\n".join(lines)


def arm_lines(results: Sequence[ArmResult]) -> list[str]:
  """One line per arm run: its name, family and what it does (`Arm.description`)."""
  arms = dict.fromkeys(result.arm for result in results)
  return [f"- `{arm}` ({ARM_REGISTRY[arm].family}): {ARM_REGISTRY[arm].description}."
          for arm in arms]


def decodability_table(results: Sequence[ArmResult], reference: str = "oracle") -> str:
  """Per site, each arm's held-out decodability of the dialect minus ``reference``'s (paired by
  seed), under the reference's own values: the dialect is written in the input tokens, so the
  oracle, never trained on the style, reads it too; what an arm adds over it is what fine-tuning
  on the style put there."""
  with_sites = [result for result in results if result.sites()]
  if not with_sites:
    return "(not measured: config.decodability_steps = 0)"
  sites = with_sites[0].sites()
  oracle = find(with_sites, reference)
  lines = ["| arm | " + " | ".join(f"`{site}`" for site in sites) + " |",
           "|---|" + "---|" * len(sites)]
  if oracle is None:
    for result in with_sites:
      cells = [f"{result.estimate(f'decodability/{site}').mean:.2f}" for site in sites]
      lines.append(f"| {result.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
  cells = [_cell(oracle.estimate(f"decodability/{site}"), ".2f") for site in sites]
  lines.append(f"| {oracle.label} (itself) | " + " | ".join(cells) + " |")
  for result in with_sites:
    if result is oracle:
      continue
    cells = [_cell(analysis.paired_difference(result.final[f"decodability/{site}"],
                                              oracle.final[f"decodability/{site}"]), "+.2f")
             for site in sites]
    lines.append(f"| {result.label} minus {oracle.label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _band(axis, steps, values, color, label, linestyle="-"):
  estimates = [analysis.mean_interval(row) for row in values]
  axis.plot(steps, [e.mean for e in estimates], color=color, label=label, linestyle=linestyle)
  axis.fill_between(steps, [e.low for e in estimates], [e.high for e in estimates], color=color,
                    alpha=0.15, linewidth=0)


def figure_attribution(results: Sequence[ArmResult], path: str) -> None:
  """Per arm (plain, oracle, plain_live, suppress, suppress_live, amplify, when run): each feature
  set's span share of the update over training, mean over seeds with its 95% band."""
  shown = [result for result in (find(results, arm) for arm in
                                 ("plain", "oracle", "plain_live", "suppress", "suppress_live",
                                  "amplify")) if result]
  figure = Figure(figsize=(4.5 * max(len(shown), 1), 3.8))
  axes = figure.subplots(1, max(len(shown), 1), squeeze=False)[0]
  for axis, result in zip(axes, shown):
    steps, share = result.attribution["span_share"]
    for name, values in group_span_shares(share)._asdict().items():
      _band(axis, steps, values, GROUP_COLORS[name], name,
            linestyle=":" if name in DOTTED else "-")
    spans = "live SAE's spans" if result.arm.endswith("_live") else "base SAE's spans"
    axis.set_title(f"{result.label}: span share of the update\n(along the {spans})", fontsize=9)
    axis.set_xlabel("step")
    axis.grid(alpha=0.3)
  axes[-1].legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def figure_sources(results: Sequence[ArmResult], path: str) -> None:
  """Plain fine-tuning: each feature set's span share of the gradient of each data source's
  batch."""
  plain = find(results, "plain")
  figure = Figure(figsize=(4.5 * len(SOURCES), 3.8))
  axes = figure.subplots(1, len(SOURCES), squeeze=False)[0]
  for axis, source in zip(axes, SOURCES):
    for name in SHARE_NAMES:
      metric = f"source/{source}/{name}"
      if plain is not None and metric in plain.curves:
        _band(axis, *plain.curves[metric], GROUP_COLORS[name], name,
              linestyle=":" if name in DOTTED else "-")
    axis.set_title(f"plain: gradient of {source} batches", fontsize=9)
    axis.set_xlabel("step")
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
      f"sums, styled with probability {config.finetune.style_rate:g}. One base model, one SAE "
      "and one labelling serve every seed: the intervals leave out their variance.", "",
      *_coverage_lines(setting, config), "",
      f"Labelling: the {config.group_size} features of highest paired t statistic of their mean "
      "code, pirate minus plain (one content in both dialects), are the style group; of the rest, "
      "the highest paired t statistic, the correct answer minus a wrong one (one set of plain "
      "sums, only the answer token differs), the skill group. Style "
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


def _coverage_lines(setting: Setting, config: ml_collections.ConfigDict) -> list[str]:
  """Which parameters the gains and the attribution act on, read from the links themselves."""
  roles = roles_of(config)
  gains = coverage_links(setting.model, setting.site, setting.coverage, roles)[setting.site]
  read = coverage_links(setting.model, setting.site, setting.coverage, ("writes",))[setting.site]
  name = lambda link: "/".join(link.path) + ("" if link.index is None else f"[{link.index}]")
  scope = ("every residual-stream site (the residual stream is one space)"
           if setting.coverage == "stream" else f"`{setting.site}` only")
  return [f"Coverage (`config.coverage = {setting.coverage!r}`): the links of {scope}. Gains act "
          f"(roles {', '.join(roles)}) on {len(gains)} parameters: "
          + ", ".join(f"`{name(link)}`" for link in gains)
          + f". The attribution reads the {len(read)} writers among them. Outside both: the "
          "LayerNorm scales and biases (elementwise, not maps into or out of the stream), the "
          "attention and MLP parameters on their inner axes (heads, hidden units), and, with "
          "site coverage, every parameter not linked to the site. The readers read LayerNorm's "
          "output, in which a stream direction d appears as gamma * (d minus its mean): the span "
          "the gains scale on a reader is the stream's, not mapped through gamma and the "
          "centring, so the block is exact on writers and approximate on readers."]


def _excess_cells(excess: CodeChangeExcess | None) -> str:
  if excess is None:
    return "- / -"
  return f"{_cell(excess.over_random, '+.4f')} / {_cell(excess.over_null, '+.4f')}"


def _checks_lines(checks: Checks) -> list[str]:
  lines = ["## Does the attribution mean something?", "",
           "- Rank correlation (Spearman, over features, per seed of plain fine-tuning) between "
           "the attributed squared magnitude summed over training and the rise of the feature's "
           f"mean code on the fine-tuning probe set: {_cell(checks.rank_correlation)}; with the "
           f"size of the change: {_cell(checks.rank_correlation_abs)}.",
           "- Span shares, plain, averaged over training: style minus the null level (the mean "
           "over random groups matched on activation to the style group, paired) "
           f"{_cell(checks.style_over_null, '+.4f')}; the oracle's style share (the no-"
           f"style reference) {_cell(checks.oracle_style_share, '.4f')}, plain's minus it "
           f"(paired) {_cell(checks.style_over_oracle, '+.4f')}.",
           "- The issue's planted check (the style absent from the fine-tuning data: the oracle) "
           "asks for no style attribution above the random-feature level. The oracle's style "
           "span share minus its null level, paired: "
           f"{_cell(checks.oracle_over_null, '+.4f')}. On the signed attribution (below), the "
           "style group's summed code change per feature minus the random control group's and "
           "minus the null level's, paired: the oracle "
           f"{_excess_cells(checks.oracle_code_change_excess)}; plain, with the style in the "
           f"data, {_excess_cells(checks.code_change_excess)}.",
           "- With a live SAE (`plain_live`: plain's updates, the SAE kept current on the "
           "fine-tuning data), the style group's span share along the live SAE's current spans: "
           f"{_cell(checks.live_style_share, '.4f')} (its null level along them "
           f"{_cell(checks.live_null, '.4f')}); minus plain's along the base SAE's (paired): "
           f"{_cell(checks.live_minus_plain, '+.4f')}. Per data source along the live SAE: not "
           "measured.",
           "- Signed attribution (the first-order change of each feature's code on the probe "
           "examples, config.code_change_examples, that each update makes; added after the first, "
           "aborted default run, not "
           "pre-registered): rank correlation of its sum over training with the rise of the mean "
           f"code {_cell(checks.code_change_correlation)}; style features among its top "
           f"{TOP_FEATURES.top} by step {TOP_FEATURES.by_step}, per seed: "
           f"{checks.code_change_style_in_top}; mean summed code change per feature "
           "by group: " + ", ".join(f"{group} {_cell(value, '.4f')}" for group, value in
                                    (checks.code_change_by_group or {}).items()) + ".", "",
           "Per data source (plain; the span share of the gradient each source's fixed batch "
           "gives, averaged over the evaluations):", "",
           "| source | " + " | ".join(SHARE_NAMES) + " |", "|---|" + "---|" * len(SHARE_NAMES)]
  for source, by_set in checks.sources.items():
    lines.append(f"| {source} | " + " | ".join(_cell(by_set.get(name), ".4f")
                                               for name in SHARE_NAMES) + " |")
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
             post_hoc: Sequence[Verdict], declared: Sequence[Verdict], checks: Checks, *,
             setting: Setting, config: ml_collections.ConfigDict, evidence: Evidence,
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
           "stream's axis of every writer of the coverage; feature k's "
           "magnitude is ||U d_k||, the update projected onto its decoder row d_k (criterion 1, "
           "as pre-registered, ranks these over the writers of the SAE's site only, as the first "
           "runs did; the declared check 1w over every writer of the coverage). A group's share "
           "is its span share: the share of ||U||^2 in the span of "
           "the group's decoder rows, ||U Q^T||^2 / ||U||^2 with Q an orthonormal basis of that "
           f"span; {config.group_size} rows in {config.model.d_model} dimensions hold about "
           f"{config.group_size / config.model.d_model:.2f} of an isotropic update; the null "
           f"level is the mean span share of {config.null_groups} random groups of as many "
           "active features, each feature drawn among the few nearest in mean code to one style "
           "feature (matched on activation: the level to compare with). The live arms' span "
           "shares are along the live SAE's current spans of the same groups. Logged every "
           f"{config.attribution_log_every} steps. Style rate: the fraction of held-out "
           "arithmetic prompts (a correct sum) whose styled continuation the model finds more "
           "probable than the plain one; style margin: the mean log-probability difference per "
           "scored token.", "",
           "Criteria (pre-registered): " + "; ".join(
               f"{criterion.name.split('.')[0]}. {criterion.describe(evidence)}"
               for criterion in PREREGISTERED) + ".", "",
           results_table(results, config.skill_threshold), "",
           *arm_lines(results), "", "Criteria:", ""]
  lines += [f"- {verdict.sentence}" for verdict in verdicts]
  lines += ["", "Post hoc, declared (not pre-registered): criteria "
            + ", ".join(criterion.name.split(".")[0] for criterion in POST_HOC)
            + " are criteria 2, 3 and 5 with their pre-registered bounds, judged on the style "
            "margin gained over the base model (each run's margin minus its margin at step 0) "
            f"instead of the style rate; {POST_HOC[0].post_hoc}. The margin does not saturate. "
            "The pre-registered judgements above stand as they are:", ""]
  lines += [f"- {verdict.sentence}" for verdict in post_hoc]
  lines += ["", "Declared checks (not pre-registered):", ""]
  lines += [f"- {criterion.name.split('.')[0]}. {criterion.describe(evidence)} ({criterion.post_hoc})."
            for criterion in DECLARED]
  lines += ["", "Judged:", ""]
  lines += [f"- {verdict.sentence}" for verdict in declared]
  lines += ["", *_checks_lines(checks), "", *_block_lines(results), "",
            "## Decodability of the style after fine-tuning", "",
            "Held-out accuracy of a linear probe for the dialect at the last position (chance "
            "0.5), at every site. The dialect is written in the input tokens, so a model never "
            "trained on the style reads it too: each arm is shown minus the oracle's (same "
            "inputs, same base model and seeds, fine-tuned without the style; paired by seed), "
            "the oracle's own values first. Above zero: fine-tuning on the style put more of it "
            "there than the inputs alone give; near the oracle's ceiling the difference cannot "
            "show it.", "", decodability_table(results), "",
            "![attribution over training](attribution.png)", "",
            "![per data source](sources.png)", "",
            "![style and skill over training](style_and_skill.png)", ""]
  if overhead is not None:
    lines += ["## Cost of the attribution", "",
              f"A fine-tuning step of one run with the decoder-row attribution over all "
              f"{setting.sae.d_sae} features and the span shares of the "
              f"{len(FEATURE_SETS) + config.null_groups} groups (what every arm runs each step, "
              f"besides the signed attribution) took {overhead['ratio']:.3f}x a step without them "
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
  masks = setting.groups.masks(setting.sae.d_sae)
  evidence = Evidence(results, masks, config.skill_threshold, config.long_factor)
  verdicts = evaluate_all(evidence)
  post_hoc = evaluate_all(evidence, POST_HOC)
  declared = evaluate_all(evidence, DECLARED)
  checks = attribution_checks(results, masks, null_groups=setting.groups.null_groups)
  figure_attribution(results, os.path.join(workdir, "attribution.png"))
  figure_sources(results, os.path.join(workdir, "sources.png"))
  figure_style_and_skill(results, os.path.join(workdir, "style_and_skill.png"))
  text = markdown(results, verdicts, post_hoc, declared, checks, setting=setting, config=config,
                  evidence=evidence, seconds=seconds, device=_device(),
                  command=command or DEFAULT_COMMAND, overhead=overhead)
  with open(os.path.join(workdir, "report.md"), "w") as handle:
    handle.write(text)
  estimate = lambda value: None if value is None else dataclasses.asdict(value)
  excess = lambda value: None if value is None else {
      "over_random": estimate(value.over_random), "over_null": estimate(value.over_null)}
  summary = {
      "seconds": seconds, "num_seeds": config.num_seeds,
      "criteria": [verdict.as_dict() for verdict in verdicts],
      "post_hoc_criteria": [verdict.as_dict() for verdict in post_hoc],
      "declared_checks": [verdict.as_dict() for verdict in declared],
      "groups": setting.groups.as_dict(), "stability": dataclasses.asdict(setting.stability),
      "sae": dataclasses.asdict(setting.sae_metrics), "overhead": overhead,
      "checks": {"rank_correlation": estimate(checks.rank_correlation),
                 "code_change_correlation": estimate(checks.code_change_correlation),
                 "code_change_style_in_top": checks.code_change_style_in_top,
                 "code_change_by_group": {group: estimate(value) for group, value in
                                          (checks.code_change_by_group or {}).items()},
                 "rank_correlation_abs": estimate(checks.rank_correlation_abs),
                 "style_over_null": estimate(checks.style_over_null),
                 "oracle_style_share": estimate(checks.oracle_style_share),
                 "style_over_oracle": estimate(checks.style_over_oracle),
                 "oracle_over_null": estimate(checks.oracle_over_null),
                 "oracle_code_change_excess": excess(checks.oracle_code_change_excess),
                 "code_change_excess": excess(checks.code_change_excess),
                 "live_style_share": estimate(checks.live_style_share),
                 "live_minus_plain": estimate(checks.live_minus_plain),
                 "live_null": estimate(checks.live_null),
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
