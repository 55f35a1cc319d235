"""Where an SAE's training activations come from: the `ActivationSource` interface, the planted
dictionary's stream, and `site_rows` (a site's activation as rows of examples).

A model's site run over a dataset and arrays a researcher already has are sources too; they need
the model and data floors, so they live above this one, in `landscape.sae_sources`.

Each source is an `ActivationSource`: pure functions of (arrays, state, key, step) that a compiled
training step calls, so a stream is reproducible from its key and step alone and resumes exactly
from a checkpointed state. Its arrays (a model's parameters, a dataset's arrays, the activations
themselves) are passed to the compiled step as arguments, never baked in as constants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape.sae._metrics import DownstreamMetrics
from landscape.sae._planted import PlantedDictionary
from landscape.sae._planted import sample_planted
from landscape.sites import BadInputError


@dataclasses.dataclass(frozen=True, eq=False)
class ActivationSource:
  """A stream of activations (B, D) at one site, and a fixed evaluation set.

  Attributes:
    name: for reports.
    d_in: D, the width of the activations.
    batch_size: B, the rows of each batch `next` returns.
    arrays: what the stream reads (a pytree of arrays); pass it to the compiled step.
    init: (arrays, key) -> the stream's state (a pytree; () for a stream without one).
    next: (arrays, state, key, step) -> (acts (B, D) float32, state): batch ``step`` of the stream
      keyed by ``key`` (the same key at every step), traceable, ``step`` an int32 scalar.
    collect: (arrays, key, num_rows) -> (num_rows, D) float32 rows drawn apart from the stream
      (for statistics such as the input normalisation's scale); ``num_rows`` static.
    eval_acts: (N, D) float32 NumPy, the fixed evaluation set.
    downstream: for a model's site, (reconstruction function act -> act) -> `DownstreamMetrics`
      of the model on its evaluation inputs (CE and KL recovered); None otherwise.
    info: facts for reports (the site, the model, the dataset, the buffer).
  """

  name: str
  d_in: int
  batch_size: int
  arrays: Any
  init: Callable[[Any, jax.Array], Any]
  next: Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, Any]]
  collect: Callable[[Any, jax.Array, int], jax.Array]
  eval_acts: np.ndarray
  downstream: Callable[[Callable[[jax.Array], jax.Array]], DownstreamMetrics] | None = None
  info: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _no_state(arrays: Any, key: jax.Array) -> tuple:
  del arrays, key
  return ()


def _check_batch_size(batch_size: int, what: str) -> None:
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise BadInputError(f"{what}: batch_size={batch_size!r} must be an int >= 1")


def planted_source(planted: PlantedDictionary, *, batch_size: int, eval_size: int = 20_000,
                   eval_key: jax.Array | None = None) -> ActivationSource:
  """Batch t is ``planted.sample(fold_in(key, t), batch_size)``: a fresh draw at every step (an
  endless stream; ``steps x batch_size`` examples over a run). The evaluation set is ``eval_size``
  draws from ``eval_key`` (PRNGKey(1_000_003) by default), fixed."""
  _check_batch_size(batch_size, "planted_source")
  if eval_size < 1:
    raise BadInputError(f"planted_source: eval_size={eval_size} must be >= 1")
  eval_key = jax.random.PRNGKey(1_000_003) if eval_key is None else eval_key
  arrays = {"features": jnp.asarray(planted.features_NxD)}

  def draw(arrays, key, num_rows):
    return sample_planted(key, arrays["features"], num_rows, probability=planted.probability,
                          noise_std=planted.noise_std, signed=planted.signed)

  def next_batch(arrays, state, key, step):
    return draw(arrays, jax.random.fold_in(key, step), batch_size), state

  eval_acts = np.asarray(jax.jit(draw, static_argnums=2)(arrays, eval_key, int(eval_size)))
  signs = "random-sign" if planted.signed else "nonnegative"
  return ActivationSource(
      name="planted", d_in=planted.d_in, batch_size=int(batch_size), arrays=arrays,
      init=_no_state, next=next_batch, collect=draw, eval_acts=eval_acts,
      info=dict(source="planted", num_features=planted.num_features, d_in=planted.d_in,
                probability=planted.probability, noise_std=planted.noise_std,
                coefficients=f"{signs} Exponential(1)", eval_size=int(eval_size)))


def site_rows(act: jax.Array, site: str, position: int | None, *,
              what: str = "site_rows") -> jax.Array:
  """The activation (B, ..., D) as rows (N, D): every position, or index ``position`` of axis 1."""
  if position is not None:
    if act.ndim < 3 or not -act.shape[1] <= position < act.shape[1]:
      raise BadInputError(f"{what}: position={position} does not index axis 1 of site "
                          f"{site!r} (shape {act.shape})")
    act = act[:, position]
  return act.reshape(-1, act.shape[-1]).astype(jnp.float32)
