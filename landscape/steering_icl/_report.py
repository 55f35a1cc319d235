"""report.md, its figures, summary.json and metrics.jsonl, from the run's measured grid (measured.npz).

Four steps: load (`Measured.load`), judge (fit every site and kind, pick the best site, measure
the criteria's quantities with their bootstrap intervals and judge them: `judge`), figures
(`write_figures`) and markdown (`markdown`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from landscape import analysis
from landscape import training
from landscape.steering_icl import _belief as belief
from landscape.steering_icl import _criteria as criteria_lib
from landscape.steering_icl._criteria import CRITERIA
from landscape.steering_icl._criteria import Measurement
from landscape.steering_icl._criteria import Verdict
from landscape.steering_icl._measure import DIFF_OF_MEANS
from landscape.steering_icl._measure import KIND_TITLES
from landscape.steering_icl._measure import RANDOM
from landscape.steering_icl._measure import SAE
from landscape.steering_icl._measure import SHOTS
from landscape.steering_icl._sae_vector import SEPARATION_THRESHOLD
from landscape.steering_icl._measure import Measured

DEFAULT_COMMAND = "landscape.steering_icl.run(config, workdir)"
MEASURED_FILE = "measured.npz"


@dataclasses.dataclass(frozen=True)
class Judged:
  """The fits, the best site, the criteria's measurements and verdicts.

  fits: (site, kind) -> fit. lomo_r2: (site, kind) -> leave-one-magnitude-out R^2 (point).
  best_site: the site whose difference-of-means fit has the highest held-out R^2.
  crossings: per magnitude of the best site, (m, measured crossing or None, N*(m) or the refusal).
  """

  fits: dict[tuple[str, str], belief.BeliefFit]
  lomo_r2: dict[tuple[str, str], float]
  best_site: str
  crossings: list[tuple[float, float | None, float | str]]
  measurements: dict[str, Measurement]
  verdicts: list[Verdict]


def measured_crossing(shots_N: np.ndarray, log_odds_N: np.ndarray) -> float | None:
  """The first N where the log-odds changes sign, by linear interpolation; None when it never does."""
  for i in range(len(shots_N) - 1):
    first, second = log_odds_N[i], log_odds_N[i + 1]
    if first == 0:
      return float(shots_N[i])
    if first * second < 0:
      return float(shots_N[i] + (shots_N[i + 1] - shots_N[i]) * first / (first - second))
  return float(shots_N[-1]) if log_odds_N[-1] == 0 else None


def _bootstrap(statistic, replicates_KxSxG: np.ndarray, *, num_units: int) -> analysis.Estimate:
  """``statistic(units_SxG)`` on the run's units and its 95% percentile interval over replicates.

  ``units_SxG`` holds unit indices, one row per (resampled) seed; the statistic reads its grids at
  them. A replicate where the statistic is undefined (NaN) is left out; ``n`` counts the rest.
  """
  num_seeds = replicates_KxSxG.shape[1]
  point = statistic(np.arange(num_units).reshape(num_seeds, -1))
  values = np.array([statistic(units) for units in replicates_KxSxG], np.float64)
  values = values[np.isfinite(values)]
  if values.size < 2:
    return analysis.Estimate(point, point, point, 1)
  low, high = np.percentile(values, [2.5, 97.5])
  return analysis.Estimate(point, float(low), float(high), int(values.size))


def _flip(fit: belief.BeliefFit, magnitude: float) -> float | str:
  try:
    return belief.flip_boundary(fit, magnitude)
  except belief.OutOfFitRangeError as error:
    return str(error)


def crossings_of(fit: belief.BeliefFit, mean_grid_MxN: np.ndarray
                 ) -> list[tuple[float, float | None, float | str]]:
  """Per magnitude: (m, the measured 50% crossing or None, N*(m) or why the fit has none in range)."""
  return [(float(m), measured_crossing(fit.shots, mean_grid_MxN[i]), _flip(fit, float(m)))
          for i, m in enumerate(fit.magnitudes)]


def crossing_agreement(crossings: list[tuple[float, float | None, float | str]]) -> float:
  """The fraction, over magnitudes where the measured or the fitted crossing lies within the
  measured shots, of those where both do and differ by at most one shot; NaN when there are none."""
  tried = [(found, fitted) for _, found, fitted in crossings
           if found is not None or not isinstance(fitted, str)]
  if not tried:
    return float("nan")
  return float(np.mean([found is not None and not isinstance(fitted, str)
                        and abs(found - fitted) <= 1.0 for found, fitted in tried]))


def evidence_correlation(params: belief.BeliefParameters, shots_N: np.ndarray,
                         bayes_log_odds_N: np.ndarray) -> float:
  """Pearson correlation over N of gamma N^(1-alpha) with the exact log-likelihood ratio of N shots
  (the posterior log-odds after them minus that without them); NaN if either is constant."""
  fitted = params.evidence(shots_N)
  bayes = bayes_log_odds_N - bayes_log_odds_N[np.argmin(shots_N)]
  if np.ptp(fitted) == 0 or np.ptp(bayes) == 0:
    return float("nan")
  return float(np.corrcoef(fitted, bayes)[0, 1])


def alpha_for_correlation(shots_N: np.ndarray, bayes_log_odds_N: np.ndarray,
                          correlation: float) -> float | None:
  """The largest alpha whose N^(1-alpha) still correlates ``correlation`` with the exact evidence.

  The correlation of the evidence term is blind to gamma (up to its sign), so criterion 4 is a
  bound on alpha alone; this says which. None when no alpha in the fit's bounds reaches it.
  """
  alphas = np.linspace(*belief.ALPHA_BOUNDS, 991)
  values = np.array([evidence_correlation(belief.BeliefParameters(0.0, 0.0, -1.0, alpha),
                                          shots_N, bayes_log_odds_N) for alpha in alphas])
  passing = alphas[np.abs(values) >= correlation]
  return float(passing.max()) if passing.size else None


def _seed_rms_a(magnitudes: np.ndarray, shots: np.ndarray, grid_UxMxN: np.ndarray,
                units_SxG: np.ndarray) -> float:
  """The root mean square over seeds of a, each seed's a fitted to the mean of its units."""
  a_S = [belief.fit_belief_dynamics(magnitudes, shots, grid_UxMxN[units], num_bootstrap=0).point.a
         for units in units_SxG]
  return float(np.sqrt(np.mean(np.square(a_S))))


def judge(measured: Measured, *, num_bootstrap: int, seed: int = 0,
          criteria: tuple[criteria_lib.Criterion, ...] = criteria_lib.PREREGISTERED) -> Judged:
  """Fits every site and kind, picks the best site, measures and judges the criteria.

  Every interval comes from the same crossed bootstrap replicates over seeds and prompt groups
  (`belief.bootstrap_replicates`).
  """
  magnitudes, shots = measured.magnitudes, measured.shots
  num_seeds = measured.num_seeds
  num_units = measured.log_odds[measured.sites[0]].shape[1]
  num_groups = num_units // num_seeds
  replicates = belief.bootstrap_replicates(num_units, num_seeds=num_seeds,
                                           num_bootstrap=num_bootstrap, seed=seed)
  fits, lomo = {}, {}
  for site in measured.sites:
    for index, kind in enumerate(measured.kinds):
      grid = measured.log_odds[site][index]
      fits[site, kind] = belief.fit_belief_dynamics(magnitudes, shots, grid, num_seeds=num_seeds,
                                                    num_bootstrap=num_bootstrap, seed=seed)
      lomo[site, kind] = belief.leave_one_magnitude_out_r2(magnitudes, shots, grid)
  reference = DIFF_OF_MEANS if DIFF_OF_MEANS in measured.kinds else measured.kinds[0]
  best_site = max(measured.sites, key=lambda site: lomo[site, reference])
  best_fit = fits[best_site, reference]
  best_grid = measured.log_odds[best_site][measured.kinds.index(reference)]
  refit = lambda units: belief.fit_belief_dynamics(magnitudes, shots, best_grid[units.ravel()],
                                                   num_bootstrap=0)
  bootstrap = lambda statistic: _bootstrap(statistic, replicates, num_units=num_units)
  where = f"at `{best_site}` ({KIND_TITLES[reference]})"
  values: dict[str, Measurement] = {}

  values[criteria_lib.LOMO_R2] = Measurement(bootstrap(
      lambda units: belief.leave_one_magnitude_out_r2(magnitudes, shots, best_grid[units.ravel()])),
      where)
  values[criteria_lib.INTERACTION_GAIN] = Measurement(bootstrap(
      lambda units: belief.interaction_r2_gain(magnitudes, shots, best_grid[units.ravel()])), where)

  crossings = crossings_of(best_fit, best_grid.mean(0))
  tried = sum(found is not None or not isinstance(fitted, str) for _, found, fitted in crossings)
  if tried:
    agreement = bootstrap(lambda units: crossing_agreement(
        crossings_of(refit(units), best_grid[units.ravel()].mean(0))))
    values[criteria_lib.CROSSING_AGREEMENT] = Measurement(
        agreement, f"{where}, over the {tried} of {len(magnitudes)} magnitudes where either crosses "
        f"within N <= {shots.max():g} (each bootstrap replicate over its own such magnitudes)")
  else:
    values[criteria_lib.CROSSING_AGREEMENT] = Measurement(
        None, f"no magnitude {where} crosses zero within N <= {shots.max():g}, measured or fitted")

  bayes_GxN = measured.bayes_log_odds_GxN
  correlation = lambda units: evidence_correlation(
      refit(units).point, shots, bayes_GxN[units[0] % num_groups].mean(0))
  if np.isfinite(correlation(np.arange(num_units).reshape(num_seeds, -1))):
    values[criteria_lib.EVIDENCE_CORRELATION] = Measurement(bootstrap(correlation), where)
  else:
    values[criteria_lib.EVIDENCE_CORRELATION] = Measurement(
        None, f"the fitted evidence term {where} or the Bayesian evidence is constant over N")

  if RANDOM in measured.kinds and reference != RANDOM:
    random_grid = measured.log_odds[best_site][measured.kinds.index(RANDOM)]
    ratio = lambda units: (_seed_rms_a(magnitudes, shots, random_grid, units)
                           / _seed_rms_a(magnitudes, shots, best_grid, units))
    values[criteria_lib.RANDOM_A_RATIO] = Measurement(
        bootstrap(ratio), f"{where}, each seed's a fitted to its own grid (its own random "
        "direction), root mean square over seeds")
  else:
    values[criteria_lib.RANDOM_A_RATIO] = Measurement(None, "the random control was not run")

  vector_shots = measured.vector_shots
  if measured.shots.min() <= vector_shots <= measured.shots.max() and 0.0 in magnitudes:
    low, high = best_fit.log_odds_interval(0.0, vector_shots)
    observed = float(measured.shot_vector_log_odds[best_site].mean())
    miss = max(low - observed, observed - high, 0.0)
    values[criteria_lib.SHOT_VECTOR_MISS] = Measurement(
        analysis.Estimate(miss, miss, miss, 1),
        f"at `{best_site}` (from {vector_shots} shots; the {KIND_TITLES[reference]} fit): "
        f"log-odds {observed:+.3f} "
        f"against the fit's [{low:+.3f}, {high:+.3f}] at N={vector_shots}, m=0")
  else:
    values[criteria_lib.SHOT_VECTOR_MISS] = Measurement(
        None, f"N={vector_shots} or m=0 lies outside the measured grid")

  verdicts = criteria_lib.evaluate_all(values, criteria)
  return Judged(fits=fits, lomo_r2=lomo, best_site=best_site, crossings=crossings,
                measurements=values, verdicts=verdicts)


def write_figures(workdir: str, measured: Measured, judged: Judged) -> list[str]:
  """grid.png (measured log-odds and the fitted surface at the best site) and boundary.png."""
  site = judged.best_site
  kind = DIFF_OF_MEANS if DIFF_OF_MEANS in measured.kinds else measured.kinds[0]
  fit = judged.fits[site, kind]
  mean_grid = measured.log_odds[site][measured.kinds.index(kind)].mean(0)
  figure = Figure(figsize=(6.5, 4.2))
  axes = figure.subplots()
  dense = np.linspace(measured.shots.min(), measured.shots.max(), 200)
  colours = [f"C{i}" for i in range(len(measured.magnitudes))]
  for i, m in enumerate(measured.magnitudes):
    axes.plot(measured.shots, mean_grid[i], "o", color=colours[i], label=f"m={m:+.2f}")
    axes.plot(dense, fit.log_odds(m, dense), "-", color=colours[i], alpha=0.7)
  axes.plot(measured.shots, measured.bayes_behaviour_N, "k--", label="exact Bayes read-out")
  axes.axhline(0.0, color="gray", lw=0.5)
  axes.set_xlabel("shots N of the other concept")
  axes.set_ylabel("log q(y_c) - log q(y_c')")
  axes.set_title(f"{site}, {KIND_TITLES[kind]}: measured (dots), fitted (lines)", fontsize=9)
  axes.legend(fontsize=7, ncol=2)
  figure.tight_layout()
  figure.savefig(os.path.join(workdir, "grid.png"), dpi=110)

  figure = Figure(figsize=(5.0, 3.6))
  axes = figure.subplots()
  for m, found, predicted in judged.crossings:
    if found is not None:
      axes.plot(m, found, "o", color="C0")
    if not isinstance(predicted, str):
      axes.plot(m, predicted, "x", color="C3")
  axes.plot([], [], "o", color="C0", label="measured 50% crossing")
  axes.plot([], [], "x", color="C3", label="fitted N*(m)")
  axes.set_xlabel("steering magnitude m (units of the site's activation norm)")
  axes.set_ylabel("shots N")
  axes.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(os.path.join(workdir, "boundary.png"), dpi=110)
  return ["grid.png", "boundary.png"]


def _position_table(measured: Measured) -> list[str]:
  length = measured.bayes_position_loss_T.shape[0]
  edges = [edge for edge in (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if edge < length] + [length]
  bins = list(zip(edges[:-1], edges[1:]))
  label = lambda low, high: f"{low + 1}" if high == low + 1 else f"{low + 1}-{high}"
  model = measured.model_position_loss_SxT.mean(0)
  return ["| tokens seen | " + " | ".join(label(low, high) for low, high in bins) + " |",
          "|---" * (len(bins) + 1) + "|",
          "| model | " + " | ".join(f"{model[low:high].mean():.3f}" for low, high in bins) + " |",
          "| Bayes-optimal | " + " | ".join(
              f"{measured.bayes_position_loss_T[low:high].mean():.3f}" for low, high in bins) + " |"]


def _exchange_cells(fit: belief.BeliefFit, shots: np.ndarray) -> list[str]:
  cells = []
  for count in shots:
    if count == 0:
      continue
    try:
      cells.append(f"{belief.magnitude_for_shots(fit, float(count)):+.3f}")
    except belief.OutOfFitRangeError:
      cells.append("out of range")
  return cells


def markdown(measured: Measured, judged: Judged, *, config: ml_collections.ConfigDict,
             seconds: float, command: str, figures: list[str]) -> str:
  shots, magnitudes = measured.shots, measured.magnitudes
  lines = ["# Steering and in-context learning: the exchange rate", "",
           "Exploratory run. Bigelow et al.'s belief-dynamics model, log-odds(c) = a*m + b + "
           "gamma*N^(1-alpha), fitted to a small GPT trained on a GINC mixture of HMMs, where the "
           "exact posterior is known.", "",
           f"Command: `{command}`", "",
           f"{config.num_seeds} seeds, {config.mixture.num_concepts} concepts, "
           f"{config.model.num_layers} layers of width {config.model.d_model}, {config.steps} steps; "
           f"{len(measured.log_odds[measured.sites[0]][0])} units (seed x prompt group); "
           f"{seconds:.0f} s to train and measure on {_device()}.", "",
           "## Does the model infer the concept in context?", "",
           f"Held-out next-token loss: model {analysis.mean_interval(measured.model_loss_S):.4f} "
           f"(95% CI over seeds); Bayes-optimal {measured.bayes_loss:.4f} nats. By position "
           "(mean over held-out documents and, for the model, seeds; a loss that falls as "
           "tokens accumulate is the concept being inferred in context):", ""] + _position_table(measured) + [
           "", "On the prompts (shots of c', then a query of c), the read-out log q(y_c) - log "
           "q(y_c') against the exact posterior's:", "",
           "| N | " + " | ".join(f"{n:g}" for n in shots) + " |",
           "|---" * (len(shots) + 1) + "|",
           "| exact posterior log-odds | " + " | ".join(f"{v:+.2f}" for v in measured.bayes_log_odds_N)
           + " |",
           "| exact Bayes read-out | " + " | ".join(f"{v:+.2f}" for v in measured.bayes_behaviour_N)
           + " |"]
  reference = DIFF_OF_MEANS if DIFF_OF_MEANS in measured.kinds else measured.kinds[0]
  grid = measured.log_odds[judged.best_site][measured.kinds.index(reference)].mean(0)
  if 0.0 in magnitudes:
    unsteered = grid[list(magnitudes).index(0.0)]
    lines.append("| model read-out, unsteered | " + " | ".join(f"{v:+.2f}" for v in unsteered)
                 + " |")
  lines += ["", _alpha_sentence(measured, judged)]
  lines += ["", "## Criteria (pre-registered)", "",
            "Criterion 5's statistic was replaced in review after the first default run (the "
            "random directions' fit averaged over seeds cancelled them); the statistic first "
            "registered is described in `landscape/steering_icl/_criteria.py`.", ""]
  lines += [f"{i + 1}. {verdict.sentence}" for i, verdict in enumerate(judged.verdicts)]
  lines += ["", f"## Measured grid at the best site, `{judged.best_site}` "
            f"({KIND_TITLES[reference]})", "",
            "Mean over units of log q(y_c) - log q(y_c'); rows m, columns N.", "",
            "| m \\ N | " + " | ".join(f"{n:g}" for n in shots) + " |",
            "|---" * (len(shots) + 1) + "|"]
  for i, m in enumerate(magnitudes):
    lines.append(f"| {m:+.2f} | " + " | ".join(f"{v:+.2f}" for v in grid[i]) + " |")
  lines += ["", "## Fitted surface per site and steering vector", "",
            "| site | vector | a | b | gamma | alpha | R^2 | held-out R^2 |", "|---" * 8 + "|"]
  for (site, kind), fit in judged.fits.items():
    lines.append(f"| `{site}` | {KIND_TITLES[kind]} | {fit.a:+.3f} | {fit.b:+.3f} | "
                 f"{fit.gamma:+.3f} | {fit.alpha:.3f} | {fit.r2:.3f} | "
                 f"{judged.lomo_r2[site, kind]:.3f} |")
  lines += ["", "Intervals are 95% bootstrap percentiles over seeds and prompt groups, resampled "
            "as crossed factors.", "",
            "## Flip boundary at the best site", "",
            "| m | measured 50% crossing | fitted N*(m) |", "|---|---|---|"]
  for m, found, predicted in judged.crossings:
    lines.append(f"| {m:+.2f} | {'none' if found is None else f'{found:.2f}'} | "
                 f"{predicted if isinstance(predicted, str) else f'{predicted:.2f}'} |")
  lines += ["", "## Exchange rate: the magnitude equivalent to N shots, per site", "",
            "Difference-of-means vector; m in units of the site's mean activation norm "
            "(\"out of range\": the conversion refuses outside the measured m and N).", "",
            "| site | scale | cos(shot vector towards c, diff. of means), over seeds | "
            + " | ".join(f"N={n:g}" for n in shots if n) + " |",
            "|---" * (3 + int(np.sum(shots > 0))) + "|"]
  for site in measured.sites:
    cosine = analysis.mean_interval(measured.cosine_shots_vs_means[site])
    lines.append(f"| `{site}` | {measured.scale[site].mean():.2f} | {cosine:.3f} | "
                 + " | ".join(_exchange_cells(judged.fits[site, reference], shots)) + " |")
  if measured.sae:
    lines += [""] + _sae_section(measured, judged, config)
  lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures] + [""]
  return "\n".join(lines)


def sae_separation(measured: Measured) -> dict[str, np.ndarray]:
  """site -> (S,) whether each seed's chosen SAE feature separates c from c' on held-out documents
  (oriented AUROC >= `SEPARATION_THRESHOLD`)."""
  return {site: values["auroc_heldout_S"] >= SEPARATION_THRESHOLD
          for site, values in measured.sae.items()}


def per_seed_a(measured: Measured, site: str, kind: str) -> np.ndarray:
  """(S,) a fitted to each seed's own units (units are seed-major)."""
  grid = measured.log_odds[site][measured.kinds.index(kind)]
  units_SxG = np.arange(grid.shape[0]).reshape(measured.num_seeds, -1)
  return np.array([belief.fit_belief_dynamics(measured.magnitudes, measured.shots, grid[units],
                                              num_bootstrap=0).point.a for units in units_SxG])


def _sae_section(measured: Measured, judged: Judged, config: ml_collections.ConfigDict) -> list[str]:
  """The SAE feature per site: the SAE, the feature chosen, whether it separates the concepts (by
  the threshold fixed before the run) and its fit beside the other vectors'."""
  settings = config.sae
  separates = sae_separation(measured)
  kinds = [kind for kind in (DIFF_OF_MEANS, SHOTS, RANDOM, SAE) if kind in measured.kinds]
  lines = ["## The SAE feature", "",
           f"A TopK SAE per seed and site ({settings.d_sae} latents, k = {settings.k}, "
           f"{settings.steps} steps of {settings.batch_size} rows over {settings.num_documents} "
           "documents of every concept, every position a row). The feature used is the one whose "
           "mean code over a document best tells documents of c from documents of c' (largest "
           "|AUROC - 0.5| on half of them); its direction is its unit decoder row, oriented towards "
           "c, steered at the same magnitudes as the others. It separates the concepts when its "
           f"AUROC on the other half is at least {SEPARATION_THRESHOLD:.2f} (threshold fixed before "
           "the run). FVE, L0 and dead fraction: the SAE on its held-out tenth of the rows, mean "
           "over seeds.", "",
           "| site | FVE | L0 | dead | feature per seed | held-out AUROC per seed | separates | "
           "cos(SAE feature, diff. of means), over seeds | "
           + " | ".join(f"a, {KIND_TITLES[kind]}" for kind in kinds) + " | held-out R^2, SAE |",
           "|---" * (9 + len(kinds)) + "|"]
  for site, values in measured.sae.items():
    a_cells = [f"{judged.fits[site, kind].a:+.3f}" for kind in kinds]
    lines.append(
        f"| `{site}` | {values['fve_S'].mean():.3f} | {values['l0_S'].mean():.1f} | "
        f"{values['dead_fraction_S'].mean():.2f} | "
        f"{', '.join(str(int(f)) for f in values['feature_S'])} | "
        f"{', '.join(f'{v:.2f}' for v in values['auroc_heldout_S'])} | "
        f"{int(separates[site].sum())} of {separates[site].size} seeds | "
        f"{analysis.mean_interval(values['cosine_vs_means_S']):.3f} | " + " | ".join(a_cells)
        + f" | {judged.lomo_r2[site, SAE]:.3f} |")
  lines += ["", "Each seed's a, fitted to its own units (each seed has its own SAE feature and random "
            "direction, so their a can cancel in the pooled fit above):", "",
            "| site | vector | a per seed | root mean square |", "|---|---|---|---|"]
  for site in measured.sae:
    for kind in kinds:
      a_S = per_seed_a(measured, site, kind)
      lines.append(f"| `{site}` | {KIND_TITLES[kind]} | {', '.join(f'{a:+.2f}' for a in a_S)} | "
                   f"{np.sqrt(np.mean(np.square(a_S))):.3f} |")
  best_auroc = max(float(values["auroc_heldout_S"].max()) for values in measured.sae.values())
  if not any(flags.any() for flags in separates.values()):
    lines += ["", f"No SAE feature separates the concepts: the best held-out AUROC at any site "
              f"and seed is {best_auroc:.2f}, below {SEPARATION_THRESHOLD:.2f}. The SAE vector "
              "here is the SAE's best feature, not a concept feature; its fit is reported as "
              "measured."]
  else:
    sentences = []
    for site, flags in separates.items():
      fit = judged.fits[site, SAE]
      compared = (f"; the difference of means': {judged.fits[site, DIFF_OF_MEANS].a:+.3f}"
                  if DIFF_OF_MEANS in measured.kinds else "")
      sentences.append(f"at `{site}` on {int(flags.sum())} of {flags.size} seeds (its a: "
                       f"{fit.a:+.3f}{compared})")
    lines += ["", "The chosen SAE feature separates the concepts " + "; ".join(sentences) + "."]
  return lines


def _alpha_sentence(measured: Measured, judged: Judged) -> str:
  """What alpha each curve implies alone, and the alpha criterion 4 tolerates."""
  shots = measured.shots
  curves = [("the exact posterior log-odds", measured.bayes_log_odds_N),
            ("the exact Bayes read-out", measured.bayes_behaviour_N)]
  kind = DIFF_OF_MEANS if DIFF_OF_MEANS in measured.kinds else measured.kinds[0]
  if 0.0 in measured.magnitudes:
    grid = measured.log_odds[judged.best_site][measured.kinds.index(kind)].mean(0)
    curves.append(("the model's unsteered read-out", grid[list(measured.magnitudes).index(0.0)]))
  fitted = ", ".join(f"{name} {belief.fit_shot_curve(shots, curve).alpha:.2f}"
                     for name, curve in curves)
  tolerated = alpha_for_correlation(shots, measured.bayes_log_odds_N, 0.9)
  bound = ("no alpha reaches it" if tolerated is None
           else f"it holds for any alpha <= {tolerated:.2f}, whatever gamma")
  return (f"Fitted alone (b + gamma N^(1-alpha)), the curves give alpha: {fitted}. A read-out "
          "bounded by the next-token probabilities flattens as the posterior grows, and alpha "
          "absorbs that flattening. Criterion 4's correlation depends on alpha only: " + bound + ".")


def _device() -> str:
  device = jax.devices()[0]
  return f"{jax.device_count()} x {getattr(device, 'device_kind', device.platform)}"


def summary_of(judged: Judged, measured: Measured, seconds: float) -> dict[str, Any]:
  estimate = lambda e: dataclasses.asdict(e)
  return dict(
      seconds=seconds, best_site=judged.best_site,
      criteria=[verdict.as_dict() for verdict in judged.verdicts],
      fits={f"{site}/{kind}": dict(a=estimate(fit.a), b=estimate(fit.b), gamma=estimate(fit.gamma),
                                   alpha=estimate(fit.alpha), r2=fit.r2,
                                   lomo_r2=judged.lomo_r2[site, kind])
            for (site, kind), fit in judged.fits.items()},
      model_loss=measured.model_loss_S.tolist(), bayes_loss=measured.bayes_loss,
      sae={site: dict(feature=values["feature_S"].tolist(),
                      auroc_heldout=values["auroc_heldout_S"].tolist(),
                      separates=separation.tolist(), fve=values["fve_S"].tolist(),
                      cosine_vs_means=values["cosine_vs_means_S"].tolist())
           for (site, values), separation in zip(measured.sae.items(),
                                                 sae_separation(measured).values())})


def write(config: ml_collections.ConfigDict, workdir: str, *, seconds: float,
          command: str | None = None) -> dict[str, Any]:
  """Reads measured.npz, judges, writes report.md, the figures and summary.json; returns the summary."""
  measured = Measured.load(os.path.join(workdir, MEASURED_FILE))
  judged = judge(measured, num_bootstrap=config.num_bootstrap, seed=config.seed,
                 criteria=CRITERIA[config.criteria])
  figures = write_figures(workdir, measured, judged)
  text = markdown(measured, judged, config=config, seconds=seconds,
                  command=command or DEFAULT_COMMAND, figures=figures)
  with open(os.path.join(workdir, "report.md"), "w") as handle:
    handle.write(text)
  summary = summary_of(judged, measured, seconds)
  training.write_json_atomically(os.path.join(workdir, "summary.json"), summary)
  write_metrics(os.path.join(workdir, "metrics.jsonl"), measured)
  return summary


def write_metrics(path: str, measured: Measured) -> None:
  """metrics.jsonl: one row per site, kind, magnitude and shot count, with every unit's log-odds."""
  with open(path, "w") as handle:
    for site in measured.sites:
      for index, kind in enumerate(measured.kinds):
        grid_UxMxN = measured.log_odds[site][index]
        for i, magnitude in enumerate(measured.magnitudes):
          for j, count in enumerate(measured.shots):
            units = grid_UxMxN[:, i, j]
            handle.write(json.dumps(dict(site=site, kind=kind, magnitude=float(magnitude),
                                         shots=float(count), log_odds=float(units.mean()),
                                         units=units.tolist())) + "\n")
