"""Preventative steering (persona vectors, Chen et al. 2025, arXiv 2507.21509).

Adding a trait's direction to a site's activation during fine-tuning supplies the trait "for free",
which removes the pressure on the weights to learn it. The term has no loss; it brings the training
intervention ``act + alpha(step) * vector``. Evaluation never applies an objective's interventions
(`landscape.training.make_eval_step` takes its own), so the steering is off there.

For a concept that varies from example to example (a shortcut that encodes the label, say), one
vector per class (C, D) and a batch field naming each example's class give each example the shift
of its own class: ``act[b] + alpha * vectors[concept[b]]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from landscape.directions import Basis
from landscape.interventions import steer
from landscape.interventions import steer_examples
from landscape.objectives._composition import Term
from landscape.objectives._composition import TermInputs
from landscape.objectives._fields import Schedule
from landscape.objectives._fields import batch_field
from landscape.objectives._fields import check_one_source
from landscape.objectives._fields import refreshed_rows
from landscape.objectives._fields import value_at
from landscape.sites import BadInputError


def _vector_rows(rows: jax.Array, *, site: str, term: str, per_class: bool) -> jax.Array:
  if rows.ndim != 2 or (not per_class and rows.shape[0] != 1):
    expected = "(C, D) vectors, one per class" if per_class else "one steering vector"
    raise BadInputError(f"loss term {term!r}: expected {expected} for site {site!r}, got shape "
                        f"{rows.shape}")
  return rows


def preventative_steering(site: str, vector: Basis | jax.Array | np.ndarray | None = None,
                          alpha: Schedule = 1.0, *, vector_key: str | None = None,
                          concept_key: str | None = None, name: str = "steering") -> Term:
  """Adds ``alpha * vector`` at ``site`` in the training forward pass; its loss is zero.

  The shift is exactly alpha times the vector as given (persona vectors are differences of means,
  not unit vectors). Metrics: ``alpha``, and ``projection``, the mean over examples (and positions)
  of the site's coordinate along the (mean) unit vector with this term's shift taken out: the
  activation shift along the trait direction that Chen et al. find predicts later trait expression.

  Args:
    site: the steered site.
    vector: (D,) array, or a one-row `Basis`; with ``concept_key``, (C, D) vectors, one per class.
      Or ``vector_key`` to read it (them) each step from ``run.refreshed`` (a refitted direction).
    alpha: a float, an optax schedule of the step, or a `hyperparameter`.
    concept_key: a batch field of per-example class indices; example b is shifted by
      ``alpha * vectors[batch[concept_key][b]]``.
  """
  check_one_source(vector, vector_key, what="vector", term=name)
  per_class = concept_key is not None
  if vector is not None:
    rows = vector.vectors if isinstance(vector, Basis) else np.asarray(vector, np.float32)
    rows = np.asarray(rows, np.float32)
    if rows.ndim == 1 and not per_class:
      rows = rows[None]
    fixed = jnp.asarray(_vector_rows(rows, site=site, term=name, per_class=per_class))
    if not np.all(np.isfinite(fixed)):
      raise BadInputError(f"loss term {name!r}: the steering vector for site {site!r} has non-finite "
                          "entries")
  else:
    fixed = None

  def rows_in(run) -> jax.Array:
    if fixed is not None:
      return fixed
    return _vector_rows(refreshed_rows(run, vector_key, site=site, term=name), site=site,
                        term=name, per_class=per_class)

  def shift_rows(run, batch) -> jax.Array:
    """(1, D) for one vector, (B, D) for per-example vectors."""
    rows = rows_in(run)
    if not per_class:
      return rows
    return jnp.take(rows, batch_field(batch, concept_key, term=name).astype(jnp.int32), axis=0)

  def interventions(run, batch):
    magnitude = value_at(alpha, run.step, run.hparams)
    if per_class:
      return {site: steer_examples(shift_rows(run, batch), magnitude)}
    return {site: steer(rows_in(run)[0], magnitude)}

  def fn(inputs: TermInputs):
    vectors = shift_rows(inputs.run, inputs.batch).astype(jnp.float32)
    alpha_now = value_at(alpha, inputs.run.step, inputs.run.hparams)
    mean_vector = jnp.mean(vectors, axis=0)
    unit_D = mean_vector / jnp.maximum(jnp.linalg.norm(mean_vector), 1e-12)
    act = inputs.acts[site].astype(jnp.float32)
    shift = jnp.mean(vectors @ unit_D)
    projection = jnp.mean(act @ unit_D) - alpha_now * shift
    return jnp.zeros((), jnp.float32), {"alpha": alpha_now, "projection": projection}

  return Term(name=name, fn=fn, weight=1.0, sites=(site,), interventions=interventions)
