"""Re-estimation: a basis refitted every N steps inside the jitted training loop.

`refit_basis` returns a refresher (it has the ``name``, ``init`` and ``update`` of the training
loop's `Refresher` protocol, by duck typing: this floor does not import the training loop). The loop
keeps its value, a `Basis`, in ``state.refreshed[name]``, so it is checkpointed with the run,
restored on resume and visible to loss terms and interventions (``interventions(run, batch)`` can
ablate along ``run.refreshed[name]``) and to gradient transforms (``optimizer_extra_args=lambda
state: {"bases": {site: state.refreshed[name]}}``).

At step t (before the loss, with the parameters the step starts from) the refresher refits when
``t % every == 0`` and otherwise keeps its value: a `jax.lax.cond`. The loop keeps the step one
unbatched scalar shared by the runs it vmaps over, so the cond stays a branch: the fit runs only at
the steps it is due (were the step batched, the cond would become a select and the fit would run,
its result discarded, at every step).

The probe batch is drawn with ``dataset.sample(dataset.arrays, key, t, batch_size)``, the key being
the one the loop hands the refresher at that step (derived from the run's state, so a resumed run
draws the same batches), or is a fixed batch given as arrays. Either way its arrays are constants of
the compiled step: give a small probe set rather than a large training set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape.data import Dataset
from landscape.sites import Basis
from landscape.sites import orthonormalize
from landscape.directions._capture import RowPlan
from landscape.directions._capture import field_rows
from landscape.directions._capture import site_rows
from landscape.directions._probes import class_weight_rows
from landscape.directions._probes import fit_logistic
from landscape.directions._probes import fit_ridge
from landscape.directions._statistics import class_directions
from landscape.directions._statistics import diff_of_means_rows
from landscape.directions._statistics import weighted_class_means
from landscape.models import Model
from landscape.sites import BadInputError

REFIT_METHODS = ("diff_of_means", "logistic_probe", "ridge_probe")


@dataclasses.dataclass(frozen=True, eq=False)
class BasisRefresher:
  """Refits a value at ``site`` every ``every`` steps: a `Basis` (K, D), or class means (C, D).

  Attributes:
    name: the key of its value in the train state's ``refreshed``.
    site: where the basis lives.
    every: the refit period in steps (step 0 included); 0 fits once, at initialisation, and keeps
      that basis (a fixed block found on the initial model).
    fit: (params, key, step) -> the value, traceable.
  """

  name: str
  site: str
  every: int
  fit: Callable[[Any, jax.Array, jax.Array], Basis]

  def init(self, key: jax.Array, params: Any) -> Basis:
    """The basis fitted on the initial params (so evaluation at step 0 already has one)."""
    return self.fit(params, key, jnp.zeros((), jnp.int32))

  def update(self, value: Basis, *, params: Any, step: jax.Array, key: jax.Array,
             run: Any) -> Basis:
    """Refits when ``step % every == 0``; otherwise returns ``value`` unchanged."""
    del run
    if self.every == 0:
      return value
    return jax.lax.cond(step % self.every == 0, lambda: self.fit(params, key, step), lambda: value)


def _row_plan(act: jax.Array, site: str, position: int | None) -> RowPlan:
  middle = tuple(act.shape[1:-1])
  if position is not None:
    if not middle or not -middle[0] <= position < middle[0]:
      raise BadInputError(f"refit_basis: position={position} does not index axis 1 of site {site!r} "
                          f"(shape {act.shape})")
    position = position % middle[0]
  return RowPlan(sites=(site,), middle=middle, position=position)


def _probe_rows(name: str, *, model: Model, site: str, data: Dataset | Mapping[str, Any], field: str,
                every: int, batch_size: int, position: int | None):
  """(rows_at(params, key, step) -> (acts (N, D) float32, labels (N,) int32), a provenance text)."""
  fixed = None
  period = f"refit every {every} steps" if every else "fitted once at initialisation"
  if isinstance(data, Dataset):
    available = jax.eval_shape(lambda a, k: data.sample(a, k, jnp.zeros((), jnp.int32), batch_size),
                               data.arrays, jax.random.PRNGKey(0))
    source = f"{period} on {batch_size} examples of {data.name}"
  else:
    fixed = {key: np.asarray(value) for key, value in data.items()}
    available = fixed
    source = f"{period} on a fixed batch of {len(fixed.get('inputs', ()))}"
  missing = sorted({"inputs", field} - set(available))
  if missing:
    raise BadInputError(f"refit {name!r}: the data has no field(s) {missing}; it has "
                        f"{sorted(available)}")

  def rows_at(params: Any, key: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    if isinstance(data, Dataset):
      batch = data.sample(data.arrays, key, step, batch_size)
    else:
      batch = {key_: jnp.asarray(fixed[key_]) for key_ in ("inputs", field)}
    _, acts = model.forward(params, batch["inputs"], capture=[site])
    plan = _row_plan(acts[site], site, position)
    labels_N = field_rows(batch[field], plan)
    if labels_N.ndim != 1:
      raise BadInputError(f"refit {name!r}: field {field!r} of shape {batch[field].shape} does not "
                          f"give one label per row of site {site!r} (shape {acts[site].shape})")
    return site_rows(acts[site], plan).astype(jnp.float32), labels_N.astype(jnp.int32)

  return rows_at, source


def refit_class_means(name: str, *, model: Model, site: str, data: Dataset | Mapping[str, Any],
                      num_classes: int, field: str = "concept", every: int = 10,
                      batch_size: int = 256, position: int | None = None) -> BasisRefresher:
  """A refresher whose value is the class means minus the grand mean at ``site``, (C, D) float32.

  The per-class offsets of a concept (persona vectors are their two-class case), for preventative
  steering along each example's own class; refitted as `refit_basis` refits (``every``, ``data``,
  ``position`` alike). Not orthonormalised: the offsets keep their lengths.
  """
  if every < 0:
    raise BadInputError(f"refit_class_means {name!r}: every={every} must be >= 0 (0: fit once at init)")
  if num_classes < 2:
    raise BadInputError(f"refit_class_means {name!r}: num_classes={num_classes} must be >= 2")
  model.check_sites([site], what=f"refit_class_means {name!r}")
  rows_at, _ = _probe_rows(name, model=model, site=site, data=data, field=field, every=every,
                           batch_size=batch_size, position=position)

  def fit(params: Any, key: jax.Array, step: jax.Array) -> jax.Array:
    acts_NxD, labels_N = rows_at(params, key, step)
    means_CxD, _, grand_D = weighted_class_means(acts_NxD, labels_N,
                                                 jnp.ones(labels_N.shape, jnp.float32), num_classes)
    return means_CxD - grand_D[None, :]

  return BasisRefresher(name=name, site=site, every=every, fit=fit)


def refit_basis(name: str, *, model: Model, site: str, data: Dataset | Mapping[str, Any],
                num_classes: int, field: str = "concept", method: str = "diff_of_means",
                every: int = 10, batch_size: int = 256, position: int | None = None,
                l2: float | None = None, steps: int = 200,
                label_names: Sequence[str] | None = None) -> BasisRefresher:
  """A refresher that refits a class basis (C - 1 directions) at ``site`` every ``every`` steps.

  Args:
    name: the key in ``state.refreshed`` (and ``run.refreshed``).
    model, site: the model and the site whose activations are fitted.
    data: a `Dataset` (a probe batch of ``batch_size`` is sampled at each refit) or a fixed batch
      (a dict of arrays with ``inputs`` and ``field``).
    num_classes: C, the number of classes of ``field`` (static: the basis has C - 1 rows).
    field: integer labels per example (B,) or per position (B, T).
    method: "diff_of_means", "logistic_probe" or "ridge_probe" (one-hot targets), as the functions
      of the same names; the rows are orthonormalised in the trace (no rank check there).
    every: the period in steps (0: fit once, at initialisation); batch_size: the probe batch
      (Dataset only).
    position: use only this index of axis 1 of a (B, T, D) site.
    l2: the probe's penalty (default: 1e-2 logistic, 1e-3 ridge); steps: logistic steps.

  Raises (at construction, before anything is compiled):
    UnknownSiteError: a site the model lacks. ValueError: a bad method, period, class count, or a
    data source without ``inputs`` or ``field``.
  """
  if method not in REFIT_METHODS:
    raise BadInputError(f"refit_basis {name!r}: method={method!r}; expected one of {REFIT_METHODS}")
  if every < 0:
    raise BadInputError(f"refit_basis {name!r}: every={every} must be >= 0 (0: fit once at init)")
  if num_classes < 2:
    raise BadInputError(f"refit_basis {name!r}: num_classes={num_classes} must be >= 2")
  model.check_sites([site], what=f"refit_basis {name!r}")
  rows_at, source = _probe_rows(name, model=model, site=site, data=data, field=field, every=every,
                                batch_size=batch_size, position=position)
  labels = class_directions(label_names, num_classes, field)
  penalty = l2 if l2 is not None else (1e-3 if method == "ridge_probe" else 1e-2)

  def rows_of(acts_NxD, labels_N, weights_N):
    if method == "diff_of_means":
      return diff_of_means_rows(acts_NxD, labels_N, weights_N, num_classes)
    if method == "logistic_probe":
      weights_DxC, _ = fit_logistic(acts_NxD, labels_N, weights_N, num_classes=num_classes,
                                    l2=penalty, steps=steps)
    else:
      targets = jax.nn.one_hot(labels_N, num_classes, dtype=jnp.float32)
      weights_DxC, _ = fit_ridge(acts_NxD, targets, weights_N, l2=penalty)
    return class_weight_rows(weights_DxC)

  def fit(params: Any, key: jax.Array, step: jax.Array) -> Basis:
    acts_NxD, labels_N = rows_at(params, key, step)
    if num_classes - 1 > acts_NxD.shape[1]:
      raise BadInputError(f"refit_basis {name!r}: {num_classes - 1} directions do not fit in site "
                          f"{site!r} of width {acts_NxD.shape[1]}")
    rows = rows_of(acts_NxD, labels_N.astype(jnp.int32), jnp.ones(labels_N.shape, jnp.float32))
    return Basis(vectors=orthonormalize(rows).astype(jnp.float32),
                 fitted_step=jnp.asarray(step, jnp.int32), site=site, labels=labels,
                 method=method, source=source)

  return BasisRefresher(name=name, site=site, every=every, fit=fit)
