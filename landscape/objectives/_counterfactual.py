"""Counterfactual consistency: the output should not change when a concept's coordinate is swapped.

At ``site`` the concept's coordinates c = act @ Q^T (Q (K, D) orthonormal rows) are permuted across
the batch, the model is rerun with an intervention that puts the swapped coordinates in place of
each example's own (``act + (c_swapped - act Q^T) Q``: the component orthogonal to span(Q) is
kept), and the divergence between the original and the counterfactual outputs is penalised.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from landscape.directions import Basis
from landscape.objectives._composition import Term
from landscape.objectives._composition import TermInputs
from landscape.objectives._composition import Weight
from landscape.objectives._fields import check_one_source
from landscape.objectives._fields import check_width
from landscape.objectives._fields import checked_rows
from landscape.objectives._fields import coordinates
from landscape.objectives._fields import refreshed_rows
from landscape.sites import BadInputError

DIVERGENCES = ("kl", "mse")
PERMUTATIONS = ("roll", "random")


def swap_coordinates(rows_KxD: jax.Array, swapped: jax.Array):
  """An intervention that sets the coordinates along ``rows_KxD`` to ``swapped`` (..., K)."""

  def intervention(act: jax.Array) -> jax.Array:
    rows = rows_KxD.astype(jnp.float32)
    change = swapped - act.astype(jnp.float32) @ rows.T
    return act + (change @ rows).astype(act.dtype)

  return intervention


def output_divergence(original: jax.Array, counterfactual: jax.Array, divergence: str) -> jax.Array:
  """Mean over examples (and positions) of KL(softmax(original) || softmax(counterfactual)), or
  the mean squared difference of the logits over classes too ("mse")."""
  original = original.astype(jnp.float32)
  counterfactual = counterfactual.astype(jnp.float32)
  if divergence == "mse":
    return jnp.mean(jnp.square(counterfactual - original))
  log_p = jax.nn.log_softmax(original, axis=-1)
  log_q = jax.nn.log_softmax(counterfactual, axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))


def counterfactual_consistency(site: str, basis: Basis | jax.Array | np.ndarray | None = None, *,
                               basis_key: str | None = None, divergence: str = "kl",
                               permutation: str = "roll", stop_gradient_original: bool = True,
                               weight: Weight = 1.0, name: str = "counterfactual") -> Term:
  """Penalises the change in output when the concept's coordinates at ``site`` come from another example.

  Value: `output_divergence` between the training outputs and the outputs of a rerun in which each
  example's coordinates along Q are replaced by those of another example of the batch. Metric
  ``flip_rate``: the fraction of examples (and positions) whose arg-max output changes.

  Args:
    basis: a `Basis` or (K, D) array with orthonormal rows; or ``basis_key`` to read them each step
      from ``inputs.run.refreshed`` (a refitted basis).
    divergence: "kl" (default): KL(p_original || p_counterfactual) between the softmaxes; it is zero
      exactly when the predictive distributions agree and ignores a shift common to all logits.
      "mse": the mean squared difference of the logits (for regression outputs).
    permutation: "roll" (default): example n takes example n - 1's coordinates (a fixed
      derangement: every example gets another's); "random": a permutation drawn from the term's
      key each step (some examples may keep their own). Both act on the whole batch under the
      sharded jit step, on each device's part under pmap.
    stop_gradient_original: True (default): the original outputs and the swapped-in coordinates are
      held fixed, so the gradient only asks the computation downstream of the site to be
      insensitive to the coordinate. Without it the model can also lower the penalty by moving its
      task predictions towards the counterfactual ones (trading accuracy for consistency), or by
      giving every example the same coordinate (which the concept penalty does more directly).
  """
  check_one_source(basis, basis_key, what="basis", term=name)
  if divergence not in DIVERGENCES:
    raise BadInputError(f"loss term {name!r}: divergence={divergence!r}; expected one of {DIVERGENCES}")
  if permutation not in PERMUTATIONS:
    raise BadInputError(f"loss term {name!r}: permutation={permutation!r}; expected one of {PERMUTATIONS}")
  fixed_rows = None if basis is None else checked_rows(basis, site=site, term=name)

  def fn(inputs: TermInputs):
    rows_KxD = fixed_rows if fixed_rows is not None else refreshed_rows(
        inputs.run, basis_key, site=site, term=name)
    act = inputs.acts[site]
    check_width(act, rows_KxD, site=site, term=name)
    coords = coordinates(act, rows_KxD)
    if permutation == "roll":
      swapped = jnp.roll(coords, 1, axis=0)
    else:
      swapped = jnp.take(coords, jax.random.permutation(inputs.rng, coords.shape[0]), axis=0)
    original = inputs.outputs
    if stop_gradient_original:
      original, swapped = jax.lax.stop_gradient((original, swapped))
    counterfactual, _ = inputs.forward(inputs.params, inputs.batch["inputs"],
                                       interventions={site: swap_coordinates(rows_KxD, swapped)})
    value = output_divergence(original, counterfactual, divergence)
    flips = jnp.argmax(counterfactual, axis=-1) != jnp.argmax(original, axis=-1)
    return value, {"flip_rate": jnp.mean(flips.astype(jnp.float32))}

  return Term(name=name, fn=fn, weight=weight, sites=(site,))
