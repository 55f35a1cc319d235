"""Decodability: how well a fresh linear probe reads a concept at each site of a model.

For a label field (a concept), a multinomial logistic probe (`fit_logistic`) is trained at every
chosen site on a train split of an evaluation set and scored on the held-out rest, against chance
(the held-out rate of the training majority class). A concept blocked at one site that is decodable
at another has come back there.

Everything after the host-side bookkeeping is one jitted function of one run's params: the model's
forward pass over the set in fixed-size chunks (`jax.lax.map`, keeping only the chosen rows), then a
probe per site. `make_decodability(...)(stacked_params)` calls it on each of S runs trained together
and gives (S, num_sites) accuracies; it is compiled once, for one run, and reused for every later
call with params of the same shapes, whatever S is (arms of an experiment with different numbers of
runs share one program).

The split is by example (every row of an example falls on the same side), fixed by ``seed``, and
identical for every run and site of a layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape.directions._capture import Captures
from landscape.directions._capture import RowPlan
from landscape.directions._capture import _chunk_rows
from landscape.directions._capture import field_rows
from landscape.directions._capture import _kept_rows
from landscape.directions._capture import _plan_rows
from landscape.directions._capture import site_rows
from landscape.directions._probes import fit_logistic
from landscape.directions._probes import _majority_rate
from landscape.directions._probes import _split_masks
from landscape.directions._probes import _weighted_accuracy
from landscape.directions._statistics import _HIGHEST
from landscape.directions._statistics import _check_rows
from landscape.directions._statistics import _class_labels
from landscape.models import Model
from landscape.sites import ALL_SITES
from landscape.sites import BadInputError


@dataclasses.dataclass(frozen=True)
class Decodability:
  """Held-out probe accuracy per site, against chance.

  Attributes:
    sites: the probed sites, in the order requested (default: the model's forward order).
    heldout_accuracy, train_accuracy: (num_sites,) for one run, (S, num_sites) for S runs.
    chance: (num_sites,) the held-out rate of the training majority class (the same for every run).
    field: the decoded label field; num_classes: its number of classes.
    num_train, num_heldout: (num_sites,) rows on each side of the split.
  """

  sites: tuple[str, ...]
  heldout_accuracy: np.ndarray
  train_accuracy: np.ndarray
  chance: np.ndarray
  field: str
  num_classes: int
  num_train: np.ndarray
  num_heldout: np.ndarray

  def as_dict(self) -> dict[str, dict[str, Any]]:
    """site -> {"heldout_accuracy", "train_accuracy", "chance"} (floats, or lists over runs)."""
    table = {}
    for index, site in enumerate(self.sites):
      table[site] = {"heldout_accuracy": self.heldout_accuracy[..., index].tolist(),
                     "train_accuracy": self.train_accuracy[..., index].tolist(),
                     "chance": float(self.chance[index])}
    return table

  def to_markdown(self) -> str:
    """A table: site, held-out accuracy (mean +- std over runs), train accuracy, chance."""
    lines = [f"| site | held-out accuracy ({self.field}) | train accuracy | chance |",
             "|---|---|---|---|"]
    for index, site in enumerate(self.sites):
      heldout = np.atleast_1d(self.heldout_accuracy[..., index])
      train = np.atleast_1d(self.train_accuracy[..., index])
      spread = f" +- {heldout.std():.3f}" if heldout.size > 1 else ""
      lines.append(f"| {site} | {heldout.mean():.3f}{spread} | {train.mean():.3f} | "
                   f"{self.chance[index]:.3f} |")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class _Layout:
  """The rows of one group of sites sharing a (B, ..., D) layout, laid out per chunk."""

  plan: RowPlan
  local_rows: np.ndarray   # (num_chunks, K) row indices within each chunk
  labels: np.ndarray       # (num_chunks, K)
  train: np.ndarray        # (num_chunks, K) 1 on training rows, 0 elsewhere (padding included)
  heldout: np.ndarray      # (num_chunks, K)
  chance: float


class _DecodabilityFn:
  """`make_decodability`'s result: call it with run-stacked params."""

  def __init__(self, model: Model, batch: Mapping[str, Any], *, field: str,
               sites: Iterable[str] | str | None, position: int | None, heldout_fraction: float,
               seed: int, max_rows: int | None, num_classes: int | None, batch_size: int,
               l2: float, steps: int, interventions=None,
               compiler_options: Mapping[str, Any] | None = None):
    self._model = model
    self._compiler_options = dict(compiler_options or {})
    self._interventions = interventions
    self._batch = {name: np.asarray(value) for name, value in batch.items()}
    what = f"decodability ({model.name})"
    if "inputs" not in self._batch or field not in self._batch:
      raise BadInputError(f"{what}: the batch needs 'inputs' and {field!r}; it has {sorted(self._batch)}")
    self._what = what
    self._field = field
    self._sites = model.site_names if sites in (None, ALL_SITES) else tuple(sites)
    model.check_sites(self._sites, what=what)
    self._options = dict(position=position, heldout_fraction=heldout_fraction, seed=seed,
                         max_rows=max_rows, num_classes=num_classes, batch_size=batch_size)
    self._l2, self._steps = float(l2), int(steps)
    self._compiled = {}

  def _prepare(self, params_like: Any):
    """Row plans, chunked inputs and per-row labels and masks for each layout (host side)."""
    options = self._options
    inputs = self._batch["inputs"]
    num_examples = inputs.shape[0]
    shapes = self._model.site_shapes(params_like, inputs[:min(2, num_examples)])
    groups: dict[tuple[int, ...], list[str]] = {}
    for site in self._sites:
      groups.setdefault(tuple(shapes[site].shape[1:-1]), []).append(site)
    chunk = min(options["batch_size"], num_examples)
    num_chunks = -(-num_examples // chunk)
    padding = num_chunks * chunk - num_examples
    chunks = np.concatenate([inputs, np.repeat(inputs[:1], padding, axis=0)], axis=0)
    chunks = chunks.reshape((num_chunks, chunk) + inputs.shape[1:])
    field = self._batch[self._field]
    _, num_classes = _class_labels(np.asarray(field).reshape(-1), options["num_classes"],
                                   site=self._sites[0], what=self._what)
    layouts = []
    for group in groups.values():
      plan = _plan_rows(self._model, params_like, inputs[:min(2, num_examples)], group,
                        options["position"], what=self._what)
      row_labels = np.asarray(field_rows(field, plan))
      if row_labels.ndim != 1:
        raise BadInputError(f"{self._what}: field {self._field!r} of shape {field.shape} does not give "
                            f"one label per row at sites {group} (rows of labels: {row_labels.shape})")
      kept = _kept_rows(num_examples * plan.rows_per_example, options["max_rows"], options["seed"])
      train, heldout = _split_masks(len(kept), options["heldout_fraction"], options["seed"],
                                    groups_N=kept // plan.rows_per_example)
      local, counts = _chunk_rows(kept, chunk * plan.rows_per_example, num_chunks)
      slot = np.concatenate([np.arange(count) for count in counts])
      chunk_of = np.repeat(np.arange(num_chunks), counts)
      laid_out = lambda values: _scatter(values, chunk_of, slot, local.shape)
      layouts.append(_Layout(plan=plan, local_rows=local, labels=laid_out(row_labels[kept]),
                             train=laid_out(train), heldout=laid_out(heldout),
                             chance=_majority_rate(row_labels[kept], train, heldout)))
    return jnp.asarray(chunks), layouts, num_classes

  def _build(self, layouts: Sequence[_Layout], num_classes: int):
    model, l2, steps = self._model, self._l2, self._steps
    interventions = self._interventions

    def one_run(params, run, chunks, local_rows, labels, train, heldout):
      def chunk_rows_of(chunk_and_rows):
        chunk_inputs, rows_per_layout = chunk_and_rows
        chosen = (dict(interventions(run, {"inputs": chunk_inputs})) if interventions is not None
                  else None)
        sites = tuple(site for layout in layouts for site in layout.plan.sites)
        _, acts = model.forward(params, chunk_inputs, capture=sites, interventions=chosen)
        return [{site: jnp.take(site_rows(acts[site], layout.plan), rows, axis=0).astype(jnp.float32)
                 for site in layout.plan.sites}
                for layout, rows in zip(layouts, rows_per_layout)]

      gathered = jax.lax.map(chunk_rows_of, (chunks, local_rows))
      train_accuracy, heldout_accuracy = [], []
      for index, layout in enumerate(layouts):
        flat = lambda x: x.reshape((-1,) + x.shape[2:])
        layout_labels = flat(labels[index])
        layout_train, layout_heldout = flat(train[index]), flat(heldout[index])
        for site in layout.plan.sites:
          accuracies = _probe_accuracies(flat(gathered[index][site]), layout_labels, layout_train,
                                         layout_heldout, num_classes=num_classes, l2=l2,
                                         steps=steps)
          train_accuracy.append(accuracies[0])
          heldout_accuracy.append(accuracies[1])
      return jnp.stack(train_accuracy), jnp.stack(heldout_accuracy)

    return jax.jit(one_run, compiler_options=self._compiler_options)

  def __call__(self, stacked_params: Any, stacked_run: Any = None) -> Decodability:
    """(S, num_sites) held-out accuracies for params with a leading run axis S.

    ``stacked_run`` (the runs' views, every leaf with the leading axis S: what the training loop's
    evaluators receive) is what the ``interventions`` given at construction read; it may be None
    when there are none.
    """
    if self._interventions is not None and stacked_run is None:
      raise BadInputError(f"{self._what}: built with interventions, so call it with the runs' "
                          "views (stacked_run)")
    params_like = jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(np.shape(leaf)[1:], leaf.dtype), stacked_params)
    key = jax.tree_util.tree_structure(params_like), tuple(
        (leaf.shape, str(leaf.dtype)) for leaf in jax.tree_util.tree_leaves(params_like))
    if key not in self._compiled:
      chunks, layouts, num_classes = self._prepare(params_like)
      self._compiled[key] = (self._build(layouts, num_classes), chunks, layouts, num_classes)
    compiled, chunks, layouts, num_classes = self._compiled[key]
    per_layout = lambda name: [jnp.asarray(getattr(layout, name)) for layout in layouts]
    row_arrays = (chunks, per_layout("local_rows"), per_layout("labels"), per_layout("train"),
                  per_layout("heldout"))
    stacked_run = {} if stacked_run is None else stacked_run
    num_runs = jax.tree_util.tree_leaves(stacked_params)[0].shape[0]
    run_of = lambda tree, index: jax.tree_util.tree_map(lambda leaf: leaf[index], tree)
    per_run = [compiled(run_of(stacked_params, index), run_of(stacked_run, index), *row_arrays)
               for index in range(num_runs)]
    train_accuracy = np.stack([np.asarray(train) for train, _ in per_run])
    heldout_accuracy = np.stack([np.asarray(heldout) for _, heldout in per_run])
    # The compiled function reports sites layout by layout; put them back in the requested order.
    sizes = [len(layout.plan.sites) for layout in layouts]
    order = [site for layout in layouts for site in layout.plan.sites]
    permutation = np.asarray([order.index(site) for site in self._sites])
    per_layout_value = lambda values: np.repeat(values, sizes)[permutation]
    return Decodability(
        sites=self._sites,
        heldout_accuracy=np.asarray(heldout_accuracy)[:, permutation],
        train_accuracy=np.asarray(train_accuracy)[:, permutation],
        chance=per_layout_value([layout.chance for layout in layouts]),
        field=self._field, num_classes=num_classes,
        num_train=per_layout_value([int(layout.train.sum()) for layout in layouts]),
        num_heldout=per_layout_value([int(layout.heldout.sum()) for layout in layouts]))


def _scatter(values: np.ndarray, chunk_of: np.ndarray, slot: np.ndarray,
             shape: tuple[int, int]) -> np.ndarray:
  """Kept rows' values laid out as (num_chunks, K): row i goes to [chunk_of[i], slot[i]]."""
  laid_out = np.zeros(shape, values.dtype)
  laid_out[chunk_of, slot] = values
  return laid_out


def make_decodability(model: Model, batch: Mapping[str, Any], *, field: str = "concept",
                      sites: Iterable[str] | str | None = None, position: int | None = None,
                      heldout_fraction: float = 0.3, seed: int = 0, max_rows: int | None = None,
                      num_classes: int | None = None, batch_size: int = 512, l2: float = 1e-2,
                      steps: int = 300, interventions=None,
                      compiler_options: Mapping[str, Any] | None = None) -> _DecodabilityFn:
  """A reusable measurement: ``measure(stacked_params) -> Decodability`` with (S, num_sites) arrays.

  Args:
    model: the model whose sites are probed.
    batch: the evaluation set (``inputs`` and the label ``field``), fixed for every call.
    field: integer class labels per example (B,) or per position (B, T, ...).
    sites: the sites to probe (default: all). Sites with different (B, ..., D) layouts are fine:
      each layout gets its own rows (one per example and position) and split.
    position: probe only this index of axis 1 (e.g. -1, the last token).
    heldout_fraction, seed: the split by example; max_rows: subsample rows (fixed by ``seed``).
    batch_size: examples per chunk of the forward pass.
    l2, steps: the logistic probe's penalty and number of steps.
    interventions: ``(run, batch) -> {site: intervention}``, the one signature of training and
      evaluation interventions, applied in the forward pass that is probed (the model as
      deployed, e.g. with an arm's evaluation-time ablation). ``run`` is one run's view, passed
      run-stacked as the call's second argument; ``batch`` holds the chunk's ``inputs``.
    compiler_options: XLA options for its program (`jax.jit`'s), e.g. the training loop's
      `landscape.training.compiler_options()`.

  The first call compiles (per params shape); later calls with params of the same shapes reuse it.
  """
  return _DecodabilityFn(model, batch, field=field, sites=sites, position=position,
                         heldout_fraction=heldout_fraction, seed=seed, max_rows=max_rows,
                         num_classes=num_classes, batch_size=batch_size, l2=l2, steps=steps,
                         interventions=interventions, compiler_options=compiler_options)


def decodability_over_runs(model: Model, stacked_params: Any, batch: Mapping[str, Any],
                           **options) -> Decodability:
  """`make_decodability(model, batch, **options)(stacked_params)`: (S, num_sites) accuracies."""
  return make_decodability(model, batch, **options)(stacked_params)


def decodability(model: Model, params: Any, batch: Mapping[str, Any], **options) -> Decodability:
  """Decodability of one run's params: (num_sites,) accuracies (see `make_decodability`)."""
  result = decodability_over_runs(model, jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf)[None],
                                                                params), batch, **options)
  return dataclasses.replace(result, heldout_accuracy=result.heldout_accuracy[0],
                             train_accuracy=result.train_accuracy[0])


def decodability_of_captures(captures: Captures, *, field: str = "concept",
                             heldout_fraction: float = 0.3, seed: int = 0,
                             num_classes: int | None = None, l2: float = 1e-2,
                             steps: int = 300) -> Decodability:
  """Decodability from rows already captured: a `logistic_probe` per site, split by example."""
  labels, num_classes = _class_labels(captures.fields[field], num_classes, site=captures.sites[0],
                                      what="decodability_of_captures")
  train, heldout = _split_masks(len(labels), heldout_fraction, seed, captures.fields["example"])
  train_accuracy, heldout_accuracy = [], []
  for site in captures.sites:
    _check_rows(captures.acts[site], site=site, what="decodability_of_captures",
                num_rows=len(labels))
    accuracies = _jitted_probe_accuracies(jnp.asarray(captures.acts[site]), jnp.asarray(labels),
                                          jnp.asarray(train), jnp.asarray(heldout),
                                          num_classes=num_classes, l2=float(l2), steps=int(steps))
    train_accuracy.append(float(accuracies[0]))
    heldout_accuracy.append(float(accuracies[1]))
  num_sites = len(captures.sites)
  return Decodability(sites=captures.sites, heldout_accuracy=np.asarray(heldout_accuracy),
                      train_accuracy=np.asarray(train_accuracy),
                      chance=np.full(num_sites, _majority_rate(labels, train, heldout)),
                      field=field, num_classes=num_classes,
                      num_train=np.full(num_sites, int(train.sum())),
                      num_heldout=np.full(num_sites, int(heldout.sum())))


def _probe_accuracies(acts_NxD: jax.Array, labels_N: jax.Array, train_N: jax.Array,
                      heldout_N: jax.Array, *, num_classes: int, l2: float, steps: int
                      ) -> tuple[jax.Array, jax.Array]:
  """(train accuracy, held-out accuracy) of a logistic probe fitted on the train rows; traceable."""
  acts = acts_NxD.astype(jnp.float32)
  weights, bias = fit_logistic(acts, labels_N, train_N, num_classes=num_classes, l2=l2, steps=steps)
  predictions = jnp.argmax(jnp.matmul(acts, weights, precision=_HIGHEST) + bias[None, :], axis=1)
  return (_weighted_accuracy(predictions, labels_N, train_N),
          _weighted_accuracy(predictions, labels_N, heldout_N))


_jitted_probe_accuracies = jax.jit(_probe_accuracies,
                                   static_argnames=("num_classes", "l2", "steps"))
