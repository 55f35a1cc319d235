"""The belief-dynamics model of steering and in-context learning, its fit, and its conversions.

Bigelow et al. (arXiv 2511.00617): steering at magnitude m shifts the concept prior, N in-context
examples (shots) add evidence, and the log-odds of concept c is

    log-odds(c | m, N) = a * m + b + gamma * N^(1 - alpha),    0 <= alpha < 1

so behaviour flips where the log-odds crosses zero, at N*(m) = ((-a m - b) / gamma)^(1 / (1 - alpha)).
Nothing here fixes the signs: with shots of the other concept c', gamma is negative.

For a fixed alpha the model is linear in (a, b, gamma), so the fit profiles alpha: ordinary least
squares inside, a grid over alpha and a bounded one-dimensional refinement outside (variable
projection), so a local minimum of alpha cannot trap it (up to the grid's step, 0.01).

Intervals come from a bootstrap over measurement units. A unit is one seed's group of prompts
measured at every (m, N); units are laid out seed-major, S seeds x G groups, and the same G prompt
groups are measured on every seed, so seeds and groups are crossed factors. A replicate resamples
seeds and groups independently, with replacement, and takes every (seed, group) pair of the two
(`bootstrap_replicates`; Owen's pigeonhole bootstrap, Ann. Appl. Stat. 2007): resampling the
S x G units as if independent would treat the G units of one seed as G independent models and make
the intervals too narrow when seeds differ. One shared set of replicates serves every statistic, so
statistics of two grids (two kinds of vector) are paired replicate by replicate.

Conversions between shots and magnitudes only answer inside the measured range of m and N; outside
it they raise `OutOfFitRangeError` naming the value and the range.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import optimize

from landscape import analysis
from landscape.sites import BadInputError

ALPHA_BOUNDS = (0.0, 0.99)
_ALPHA_GRID = np.linspace(*ALPHA_BOUNDS, 100)


class OutOfFitRangeError(BadInputError):
  """A conversion asked outside the range of magnitudes or shots where the fit was measured."""


@dataclasses.dataclass(frozen=True)
class BeliefParameters:
  """One set of the model's parameters; ``interaction`` is the m * N^(1 - alpha) coefficient (0 without)."""

  a: float
  b: float
  gamma: float
  alpha: float
  interaction: float = 0.0

  def log_odds(self, magnitude, shots):
    """The model's log-odds at magnitude(s) m and shot count(s) N (broadcast together)."""
    evidence = np.power(np.asarray(shots, np.float64), 1.0 - self.alpha)
    magnitude = np.asarray(magnitude, np.float64)
    return self.a * magnitude + self.b + self.gamma * evidence + self.interaction * magnitude * evidence

  def evidence(self, shots):
    """gamma * N^(1 - alpha): the shots' contribution to the log-odds."""
    return self.gamma * np.power(np.asarray(shots, np.float64), 1.0 - self.alpha)


@dataclasses.dataclass(frozen=True)
class BeliefFit:
  """A fit of the belief-dynamics model to a grid of log-odds over (m, N).

  Attributes:
    point: the least-squares parameters on the mean grid.
    a, b, gamma, alpha: each the point estimate (as ``mean``) with its bootstrap 95% percentile
      interval (``n`` the number of bootstrap refits; equal to the point when there was one unit).
      The bootstrap is over units, crossed seeds x groups (`bootstrap_replicates`).
    r2: in-sample R^2 of the point fit on the mean grid.
    magnitudes, shots: the grid the fit was measured on (its range bounds every conversion).
    bootstrap: (K, 4) rows (a, b, gamma, alpha) of the bootstrap refits, in the order of
      `bootstrap_replicates`' replicates; empty with one unit.
  """

  point: BeliefParameters
  a: analysis.Estimate
  b: analysis.Estimate
  gamma: analysis.Estimate
  alpha: analysis.Estimate
  r2: float
  magnitudes: np.ndarray
  shots: np.ndarray
  bootstrap: np.ndarray

  @property
  def magnitude_range(self) -> tuple[float, float]:
    return float(self.magnitudes.min()), float(self.magnitudes.max())

  @property
  def shots_range(self) -> tuple[float, float]:
    return float(self.shots.min()), float(self.shots.max())

  def log_odds(self, magnitude, shots):
    return self.point.log_odds(magnitude, shots)

  def log_odds_interval(self, magnitude: float, shots: float) -> tuple[float, float]:
    """The 95% bootstrap interval of the fitted log-odds at (m, N); the point when unbootstrapped."""
    if not len(self.bootstrap):
      value = float(self.log_odds(magnitude, shots))
      return value, value
    values = [BeliefParameters(*row).log_odds(magnitude, shots) for row in self.bootstrap]
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _design(magnitudes_M: np.ndarray, shots_N: np.ndarray, alpha: float,
            interaction: bool) -> np.ndarray:
  """(M * N, 3 or 4) columns m, 1, N^(1 - alpha) (and m * N^(1 - alpha)), grid flattened m-major."""
  m_MxN, n_MxN = np.meshgrid(magnitudes_M, shots_N, indexing="ij")
  evidence = np.power(n_MxN, 1.0 - alpha)
  columns = [m_MxN, np.ones_like(m_MxN), evidence] + ([m_MxN * evidence] if interaction else [])
  return np.stack([column.ravel() for column in columns], axis=1)


def _linear_fit(magnitudes_M, shots_N, grid_MxN, alpha, interaction):
  """(coefficients, residual sum of squares) of the model at this alpha."""
  design = _design(magnitudes_M, shots_N, alpha, interaction)
  target = grid_MxN.ravel()
  coefficients, *_ = np.linalg.lstsq(design, target, rcond=None)
  return coefficients, float(np.sum((design @ coefficients - target) ** 2))


def _fit_point(magnitudes_M, shots_N, grid_MxN, interaction=False) -> BeliefParameters:
  """Least squares over (a, b, gamma[, interaction]) profiled over alpha in ALPHA_BOUNDS."""
  rss = lambda alpha: _linear_fit(magnitudes_M, shots_N, grid_MxN, alpha, interaction)[1]
  profile = np.array([rss(alpha) for alpha in _ALPHA_GRID])
  best = int(np.argmin(profile))
  low = _ALPHA_GRID[max(best - 1, 0)]
  high = _ALPHA_GRID[min(best + 1, len(_ALPHA_GRID) - 1)]
  refined = optimize.minimize_scalar(rss, bounds=(low, high), method="bounded",
                                     options=dict(xatol=1e-6))
  alpha = float(refined.x) if refined.fun <= profile[best] else float(_ALPHA_GRID[best])
  coefficients, _ = _linear_fit(magnitudes_M, shots_N, grid_MxN, alpha, interaction)
  return BeliefParameters(a=float(coefficients[0]), b=float(coefficients[1]),
                          gamma=float(coefficients[2]), alpha=alpha,
                          interaction=float(coefficients[3]) if interaction else 0.0)


def fit_shot_curve(shots_N: Sequence[float], values_N: Sequence[float]) -> BeliefParameters:
  """b + gamma * N^(1 - alpha) fitted to one curve over shot counts (no steering: a = 0).

  The same profiled least squares as `fit_belief_dynamics`; used to ask what alpha a curve alone
  implies (e.g. the exact posterior log-odds, or a read-out that saturates).
  """
  shots_N = np.asarray(shots_N, np.float64)
  values_N = np.asarray(values_N, np.float64)
  if shots_N.ndim != 1 or values_N.shape != shots_N.shape or np.unique(shots_N).size < 3:
    raise BadInputError(f"fit_shot_curve: shots {shots_N.tolist()} and values of shape "
                        f"{values_N.shape}; expected 3 or more distinct shot counts, one value each")
  if np.any(shots_N < 0) or not np.all(np.isfinite(values_N)):
    raise BadInputError(f"fit_shot_curve: shots {shots_N.tolist()} must be >= 0 and the values "
                        f"finite, got {values_N.tolist()}")
  # One magnitude, 0: the m column is zero and least squares' minimum-norm answer sets a = 0.
  return _fit_point(np.zeros(1), shots_N, values_N[None])


def bootstrap_replicates(num_units: int, *, num_seeds: int | None = None, num_bootstrap: int,
                         seed: int) -> np.ndarray:
  """(K, S, G) unit indices: each replicate's resampled seeds x resampled groups, crossed.

  Units are seed-major: unit s * G + g is seed s's group g (G = num_units / num_seeds). A replicate
  draws S seeds and G groups with replacement and keeps every pair. ``num_seeds=None`` treats every
  unit as its own seed (G = 1): units resampled independently. Deterministic in ``seed``.
  """
  num_seeds = num_units if num_seeds is None else num_seeds
  if num_seeds < 1 or num_units % num_seeds:
    raise BadInputError(f"bootstrap: num_seeds={num_seeds} must divide the {num_units} units "
                        "(laid out seed-major, seeds x groups)")
  if num_bootstrap < 0:
    raise BadInputError(f"bootstrap: num_bootstrap={num_bootstrap} must be >= 0")
  num_groups = num_units // num_seeds
  rng = np.random.default_rng(seed)
  seeds_KxS = rng.integers(0, num_seeds, (num_bootstrap, num_seeds))
  groups_KxG = rng.integers(0, num_groups, (num_bootstrap, num_groups))
  return seeds_KxS[:, :, None] * num_groups + groups_KxG[:, None, :]


def r_squared(observed, predicted) -> float:
  """1 - sum (observed - predicted)^2 / sum (observed - mean)^2."""
  observed, predicted = np.asarray(observed, np.float64), np.asarray(predicted, np.float64)
  total = np.sum((observed - observed.mean()) ** 2)
  if total == 0:
    raise BadInputError("r_squared: the observed values are all equal; R^2 is undefined")
  return float(1.0 - np.sum((observed - predicted) ** 2) / total)


def _check_grid(magnitudes_M, shots_N, log_odds_UxMxN) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  magnitudes_M = np.asarray(magnitudes_M, np.float64)
  shots_N = np.asarray(shots_N, np.float64)
  log_odds = np.asarray(log_odds_UxMxN, np.float64)
  if log_odds.ndim == 2:
    log_odds = log_odds[None]
  if log_odds.shape[1:] != (magnitudes_M.size, shots_N.size) or magnitudes_M.ndim != 1:
    raise BadInputError(f"belief fit: log-odds of shape {np.shape(log_odds_UxMxN)}; expected (units, "
                        f"{magnitudes_M.size} magnitudes, {shots_N.size} shot counts) or (M, N)")
  if np.unique(magnitudes_M).size < 2 or np.unique(shots_N).size < 3:
    raise BadInputError(f"belief fit: needs at least 2 distinct magnitudes and 3 distinct shot "
                        f"counts, got magnitudes {magnitudes_M.tolist()} and shots {shots_N.tolist()}")
  if np.any(shots_N < 0):
    raise BadInputError(f"belief fit: shot counts must be >= 0, got {shots_N.tolist()}")
  if not np.all(np.isfinite(log_odds)):
    raise BadInputError(f"belief fit: {np.sum(~np.isfinite(log_odds))} non-finite log-odds")
  return magnitudes_M, shots_N, log_odds


def fit_belief_dynamics(magnitudes_M: Sequence[float], shots_N: Sequence[float],
                        log_odds_UxMxN: np.ndarray, *, num_seeds: int | None = None,
                        num_bootstrap: int = 200, seed: int = 0) -> BeliefFit:
  """Fits a*m + b + gamma*N^(1-alpha) to measured log-odds, with bootstrap intervals over units.

  Args:
    magnitudes_M: the steering magnitudes of the grid's rows.
    shots_N: the shot counts of its columns (N = 0 allowed: its evidence term is 0).
    log_odds_UxMxN: the log-odds measured by each of U units at every cell, seed-major (seeds x
      prompt groups); a (M, N) grid is one unit.
    num_seeds: S, for the crossed bootstrap of `bootstrap_replicates`; None resamples units as if
      independent.
    num_bootstrap: bootstrap replicates (none with one unit).
  """
  magnitudes_M, shots_N, log_odds = _check_grid(magnitudes_M, shots_N, log_odds_UxMxN)
  mean_grid = log_odds.mean(0)
  point = _fit_point(magnitudes_M, shots_N, mean_grid)
  num_units = log_odds.shape[0]
  rows = []
  if num_units > 1:
    replicates = bootstrap_replicates(num_units, num_seeds=num_seeds, num_bootstrap=num_bootstrap,
                                      seed=seed)
    for units in replicates:
      refit = _fit_point(magnitudes_M, shots_N, log_odds[units.ravel()].mean(0))
      rows.append((refit.a, refit.b, refit.gamma, refit.alpha))
  bootstrap = np.asarray(rows, np.float64).reshape(-1, 4)

  def estimate(index, value):
    if not len(bootstrap):
      return analysis.Estimate(value, value, value, 1)
    low, high = np.percentile(bootstrap[:, index], [2.5, 97.5])
    return analysis.Estimate(value, float(low), float(high), len(bootstrap))

  return BeliefFit(point=point, a=estimate(0, point.a), b=estimate(1, point.b),
                   gamma=estimate(2, point.gamma), alpha=estimate(3, point.alpha),
                   r2=r_squared(mean_grid, point.log_odds(magnitudes_M[:, None], shots_N[None, :])),
                   magnitudes=magnitudes_M, shots=shots_N, bootstrap=bootstrap)


def leave_one_magnitude_out_r2(magnitudes_M: Sequence[float], shots_N: Sequence[float],
                               log_odds_UxMxN: np.ndarray) -> float:
  """Held-out R^2: each magnitude's row of the mean grid predicted by a fit to the other rows."""
  magnitudes_M, shots_N, log_odds = _check_grid(magnitudes_M, shots_N, log_odds_UxMxN)
  if magnitudes_M.size < 3:
    raise BadInputError(f"leave-one-magnitude-out: needs at least 3 magnitudes, got "
                        f"{magnitudes_M.tolist()}")
  mean_grid = log_odds.mean(0)
  predicted = np.zeros_like(mean_grid)
  for held in range(magnitudes_M.size):
    keep = np.arange(magnitudes_M.size) != held
    fit = _fit_point(magnitudes_M[keep], shots_N, mean_grid[keep])
    predicted[held] = fit.log_odds(magnitudes_M[held], shots_N)
  return r_squared(mean_grid, predicted)


def interaction_r2_gain(magnitudes_M: Sequence[float], shots_N: Sequence[float],
                        log_odds_UxMxN: np.ndarray) -> float:
  """In-sample R^2 with an m * N^(1 - alpha) term minus R^2 without it (additivity's test)."""
  magnitudes_M, shots_N, log_odds = _check_grid(magnitudes_M, shots_N, log_odds_UxMxN)
  mean_grid = log_odds.mean(0)
  r2 = lambda params: r_squared(mean_grid, params.log_odds(magnitudes_M[:, None], shots_N[None, :]))
  return (r2(_fit_point(magnitudes_M, shots_N, mean_grid, interaction=True))
          - r2(_fit_point(magnitudes_M, shots_N, mean_grid)))


def _check_in_range(value: float, bounds: tuple[float, float], *, name: str, what: str) -> None:
  low, high = bounds
  tolerance = 1e-9 * max(1.0, abs(low), abs(high))
  if not np.isfinite(value) or value < low - tolerance or value > high + tolerance:
    raise OutOfFitRangeError(f"{what}: {name}={value:.6g} is outside the range where the fit was "
                             f"measured, [{low:.6g}, {high:.6g}]")


def _power_root(ratio: float, alpha: float) -> float:
  return float(ratio ** (1.0 / (1.0 - alpha)))


def _check_shots_move(fit: BeliefFit, what: str) -> None:
  if fit.point.gamma == 0:
    raise OutOfFitRangeError(f"{what}: the fitted gamma is 0; shots do not move the log-odds")


def shots_for_magnitude(fit: BeliefFit, magnitude: float) -> float:
  """The number of shots whose evidence equals steering at ``magnitude``: gamma N^(1-alpha) = a m.

  Raises OutOfFitRangeError when ``magnitude`` or the answer lies outside the measured range, or
  when steering at ``magnitude`` moves the log-odds the other way from shots (no N is equivalent).
  """
  what = "shots_for_magnitude"
  _check_in_range(magnitude, fit.magnitude_range, name="magnitude", what=what)
  _check_shots_move(fit, what)
  p = fit.point
  ratio = p.a * magnitude / p.gamma
  if ratio < 0:
    raise OutOfFitRangeError(
        f"{what}: magnitude={magnitude:.6g} shifts the log-odds by a*m={p.a * magnitude:+.4g}, the "
        f"other way from shots (gamma={p.gamma:+.4g}); no number of shots is equivalent")
  shots = _power_root(ratio, p.alpha)
  _check_in_range(shots, fit.shots_range, name="equivalent shots", what=what)
  return shots


def magnitude_for_shots(fit: BeliefFit, shots: float) -> float:
  """The steering magnitude whose shift equals the evidence of ``shots``: a m = gamma N^(1-alpha).

  Raises OutOfFitRangeError when ``shots`` or the answer lies outside the measured range.
  """
  what = "magnitude_for_shots"
  _check_in_range(shots, fit.shots_range, name="shots", what=what)
  p = fit.point
  if p.a == 0:
    raise OutOfFitRangeError(f"{what}: the fitted a is 0; steering has no equivalent of shots")
  magnitude = float(p.evidence(shots) / p.a)
  _check_in_range(magnitude, fit.magnitude_range, name="equivalent magnitude", what=what)
  return magnitude


def flip_boundary(fit: BeliefFit, magnitude: float) -> float:
  """N*(m) = ((-a m - b) / gamma)^(1 / (1 - alpha)): the shots at which the log-odds crosses zero.

  Raises OutOfFitRangeError when ``magnitude`` or N* lies outside the measured range, or when the
  log-odds at ``magnitude`` never crosses zero as N grows.
  """
  what = "flip_boundary"
  _check_in_range(magnitude, fit.magnitude_range, name="magnitude", what=what)
  _check_shots_move(fit, what)
  p = fit.point
  ratio = (-p.a * magnitude - p.b) / p.gamma
  if ratio < 0:
    raise OutOfFitRangeError(
        f"{what}: at magnitude={magnitude:.6g} the log-odds a*m+b={p.a * magnitude + p.b:+.4g} "
        f"already has the sign shots push towards (gamma={p.gamma:+.4g}); it never flips")
  boundary = _power_root(ratio, p.alpha)
  _check_in_range(boundary, fit.shots_range, name="N*", what=what)
  return boundary
