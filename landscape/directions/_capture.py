"""Capture: activations at chosen sites over a dataset, as rows ready for probes.

A model is run over an evaluation set (a dict of arrays) or over batches drawn from a `Dataset`'s
sampler, in fixed-size batches through one jitted function, and the activations at the chosen sites
are kept as rows: a site's activation (B, *positions, D) becomes B * prod(positions) rows of width D
(one per example and position: tokens for a GPT, pixels for a convolution), or, with ``position``,
the B rows at that index of axis 1 (the last token, say). Each row comes with the matching fields of
the batch (labels, concept, ...) and its ``row``, ``example`` and ``position`` indices.

Memory stays bounded: with ``max_rows`` a fixed subset of rows is chosen up front (from ``seed``)
and each batch gathers its share of it on the device, so at most ``max_rows`` rows per site ever
reach the host. Batches are sharded over a 1-D mesh of the devices on the batch axis (padded to a
multiple of the device count with rows that are never kept). Which rows are kept, and their fields,
do not depend on the number of devices or the batch size; the activations do only up to float32
rounding (another split of the batch may sum a matmul in another order: a few ulps).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from landscape.data import Dataset
from landscape.models import Model
from landscape.sites import ALL_SITES
from landscape.sites import BadInputError

Batch = Mapping[str, Any]
_INDEX_FIELDS = ("row", "example", "position")


@dataclasses.dataclass(frozen=True)
class Captures:
  """Activation rows at sites, with the per-row fields of the examples they came from.

  Attributes:
    acts: site -> (N, D) float32 NumPy array; row n of every site belongs to the same example and
      position.
    fields: name -> (N, ...) NumPy array: the batch's fields expanded to rows, plus ``row`` (the
      row's index among all rows before subsampling), ``example`` (its example's index in the set
      or stream) and ``position`` (the flat position within the example, or the chosen position).
    rows_per_example: rows each example contributes (1 for (B, D) sites or a chosen position).
    source: where the rows came from, for provenance.
  """

  acts: dict[str, np.ndarray]
  fields: dict[str, np.ndarray]
  rows_per_example: int = 1
  source: str = ""

  @property
  def sites(self) -> tuple[str, ...]:
    return tuple(self.acts)

  @property
  def num_rows(self) -> int:
    return int(next(iter(self.fields.values())).shape[0])

  def __getitem__(self, site: str) -> np.ndarray:
    return self.acts[site]


@dataclasses.dataclass(frozen=True)
class RowPlan:
  """How site activations become rows (static).

  sites: the captured sites. middle: the axes between batch and width, (T,) for tokens, () for
  (B, D) sites, before ``position`` is applied. position: an index into axis 1, or None.
  """

  sites: tuple[str, ...]
  middle: tuple[int, ...]
  position: int | None

  @property
  def kept_middle(self) -> tuple[int, ...]:
    return self.middle if self.position is None else self.middle[1:]

  @property
  def rows_per_example(self) -> int:
    return math.prod(self.kept_middle)


def _plan_rows(model: Model, params: Any, example_inputs: Any, sites: Iterable[str] | str,
               position: int | None, *, what: str) -> RowPlan:
  """Checks the sites and their shapes before anything is compiled, and returns the row plan.

  Raises:
    UnknownSiteError: a site the model does not have.
    ValueError: sites whose activations have different position axes (they would not give the
      same rows), or a position outside axis 1.
  """
  names = model.site_names if sites == ALL_SITES else tuple(sites)
  if not names:
    raise BadInputError(f"{what}: no sites to capture")
  model.check_sites(names, what=what)
  shapes = model.site_shapes(params, example_inputs)
  middles = {name: tuple(shapes[name].shape[1:-1]) for name in names}
  distinct = sorted(set(middles.values()))
  if len(distinct) > 1:
    listing = ", ".join(f"{name} {tuple(shapes[name].shape)}" for name in names)
    raise BadInputError(f"{what}: the sites have different position axes ({listing}); capture sites "
                        "with the same (B, ..., D) layout together")
  middle = distinct[0]
  if position is not None:
    if not middle:
      raise BadInputError(f"{what}: position={position} but the sites {list(names)} have no position "
                          f"axis (shape {tuple(shapes[names[0]].shape)})")
    if not -middle[0] <= position < middle[0]:
      raise BadInputError(f"{what}: position={position} is outside axis 1 of size {middle[0]} (site "
                          f"{names[0]!r}, shape {tuple(shapes[names[0]].shape)})")
    position = position % middle[0]
  return RowPlan(sites=tuple(names), middle=middle, position=position)


def site_rows(act: jax.Array, plan: RowPlan) -> jax.Array:
  """(B, *middle, D) -> (B * rows_per_example, D), example-major; traceable."""
  if plan.position is not None:
    act = act[:, plan.position]
  return act.reshape(act.shape[0] * plan.rows_per_example, act.shape[-1])


def field_rows(value: jax.Array, plan: RowPlan) -> jax.Array:
  """A batch field expanded to rows, example-major; traceable.

  A field whose axes after the batch start with the sites' position axes (labels (B, T) of a token
  model) is indexed and flattened like the activations; any other field (a concept (B,)) is repeated
  for each of its example's rows.
  """
  value = jnp.asarray(value)
  batch = value.shape[0]
  middle = plan.middle
  if middle and tuple(value.shape[1:1 + len(middle)]) == middle:
    if plan.position is not None:
      value = value[:, plan.position]
    tail = value.shape[1 + len(plan.kept_middle):]
    return value.reshape((batch * plan.rows_per_example,) + tuple(tail))
  return jnp.repeat(value, plan.rows_per_example, axis=0,
                    total_repeat_length=batch * plan.rows_per_example)


def _capture_rows(model: Model, params: Any, batch: Batch, plan: RowPlan,
                  field_names: Sequence[str], local_rows_K: jax.Array,
                  interventions: Mapping[str, Any] | None = None
                  ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """One batch's kept rows: (site -> (K, D) float32, field -> (K, ...)); traceable."""
  _, acts = model.forward(params, batch["inputs"], interventions=interventions, capture=plan.sites)
  rows = {site: jnp.take(site_rows(acts[site], plan), local_rows_K, axis=0).astype(jnp.float32)
          for site in plan.sites}
  fields = {name: jnp.take(field_rows(batch[name], plan), local_rows_K, axis=0)
            for name in field_names}
  return rows, fields


def _kept_rows(total_rows: int, max_rows: int | None, seed: int) -> np.ndarray:
  """The sorted indices of the rows to keep: all, or ``max_rows`` drawn without replacement."""
  if max_rows is None or max_rows >= total_rows:
    return np.arange(total_rows)
  if max_rows < 1:
    raise BadInputError(f"max_rows={max_rows} must be positive")
  return np.sort(np.random.default_rng(seed).choice(total_rows, size=max_rows, replace=False))


def _chunk_rows(kept: np.ndarray, rows_per_chunk: int, num_chunks: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """(local indices (num_chunks, K), counts (num_chunks,)): each chunk's kept rows, padded with 0.

  K is the largest count, so every chunk gathers the same number of rows (one compilation).
  """
  chunk_of = kept // rows_per_chunk
  counts = np.bincount(chunk_of, minlength=num_chunks)
  width = max(int(counts.max()), 1)
  local = np.zeros((num_chunks, width), np.int32)
  for chunk in range(num_chunks):
    indices = kept[chunk_of == chunk] - chunk * rows_per_chunk
    local[chunk, :len(indices)] = indices
  return local, counts


def _batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named ``batch`` over ``devices`` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.array(devices), ("batch",))


def _pad_to(value: np.ndarray, length: int) -> np.ndarray:
  value = np.asarray(value)
  if value.shape[0] == length:
    return value
  return np.concatenate([value, np.repeat(value[:1], length - value.shape[0], axis=0)], axis=0)


def _pad_traced(value: jax.Array, length: int) -> jax.Array:
  if value.shape[0] == length:
    return value
  return jnp.concatenate([value, jnp.repeat(value[:1], length - value.shape[0], axis=0)], axis=0)


def _field_names(fields: Sequence[str] | None, available: Iterable[str], *,
                 what: str) -> tuple[str, ...]:
  available = [name for name in available if name != "inputs"]
  if fields is None:
    return tuple(name for name in available if name not in _INDEX_FIELDS)
  missing = sorted(set(fields) - set(available))
  if missing:
    raise BadInputError(f"{what}: field(s) {missing} not in the batch; it has {sorted(available)}")
  return tuple(fields)


def _index_fields(kept: np.ndarray, plan: RowPlan) -> dict[str, np.ndarray]:
  rows = plan.rows_per_example
  indices = {"row": kept.astype(np.int64), "example": (kept // rows).astype(np.int64)}
  if plan.position is not None:
    indices["position"] = np.full(kept.shape, plan.position, np.int64)
  elif rows > 1:
    indices["position"] = (kept % rows).astype(np.int64)
  return indices


def _collect(run_chunk, num_chunks: int, counts: np.ndarray, plan: RowPlan,
             field_names: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  acts = {site: [] for site in plan.sites}
  fields = {name: [] for name in field_names}
  for chunk in range(num_chunks):
    if not counts[chunk]:
      continue
    rows, values = jax.device_get(run_chunk(chunk))
    for site in plan.sites:
      acts[site].append(np.asarray(rows[site])[:counts[chunk]])
    for name in field_names:
      fields[name].append(np.asarray(values[name])[:counts[chunk]])
  acts = {site: np.concatenate(parts, axis=0) for site, parts in acts.items()}
  fields = {name: np.concatenate(parts, axis=0) for name, parts in fields.items()}
  return acts, fields


def capture(model: Model, params: Any, batch: Batch, *, sites: Iterable[str] | str = ALL_SITES,
            batch_size: int = 256, max_rows: int | None = None, seed: int = 0,
            position: int | None = None, fields: Sequence[str] | None = None,
            interventions: Mapping[str, Any] | None = None,
            devices: Sequence[jax.Device] | None = None, source: str = "") -> Captures:
  """Captures activation rows at ``sites`` over every example of ``batch`` (an evaluation set).

  Args:
    model, params: the model and one run's parameters.
    batch: a dict of arrays with a leading example axis; ``inputs`` is fed to the model.
    sites: site names, or ALL_SITES; all must share a (B, ..., D) layout.
    batch_size: examples per compiled call (rounded up to a multiple of the device count).
    max_rows: keep at most this many rows (a fixed random subset drawn from ``seed``).
    position: keep only this index of axis 1 (e.g. -1: the last token).
    fields: the batch fields to expand to rows (default: all but ``inputs``).
    interventions: applied in the forward pass (captures see the value after them).
    devices: the devices the batch axis is sharded over (default: all).

  Returns:
    `Captures` with rows in example-major order.
  """
  what = f"capture ({model.name})"
  batch = {name: np.asarray(value) for name, value in batch.items()}
  if "inputs" not in batch:
    raise BadInputError(f"{what}: the batch has no 'inputs' field (fields: {sorted(batch)})")
  num_examples = batch["inputs"].shape[0]
  lengths = {name: value.shape[0] for name, value in batch.items()}
  if len(set(lengths.values())) != 1:
    raise BadInputError(f"{what}: fields have different lengths {lengths}")
  field_names = _field_names(fields, batch, what=what)
  plan = _plan_rows(model, params, batch["inputs"][:min(2, num_examples)], sites, position,
                    what=what)
  mesh = _batch_mesh(devices)
  num_devices = mesh.devices.size
  chunk = -(-min(batch_size, num_examples) // num_devices) * num_devices
  num_chunks = -(-num_examples // chunk)
  kept = _kept_rows(num_examples * plan.rows_per_example, max_rows, seed)
  local, counts = _chunk_rows(kept, chunk * plan.rows_per_example, num_chunks)
  padded = {name: _pad_to(batch[name], num_chunks * chunk) for name in ("inputs",) + field_names}

  row_sharding = NamedSharding(mesh, PartitionSpec("batch"))
  replicated = NamedSharding(mesh, PartitionSpec())
  params = jax.device_put(params, replicated)
  gather = jax.jit(lambda p, b, rows: _capture_rows(model, p, b, plan, field_names, rows,
                                                    interventions))

  def run_chunk(index):
    part = {name: value[index * chunk:(index + 1) * chunk] for name, value in padded.items()}
    return gather(params, jax.device_put(part, row_sharding), jax.device_put(local[index], replicated))

  acts, values = _collect(run_chunk, num_chunks, counts, plan, field_names)
  values.update(_index_fields(kept, plan))
  return Captures(acts=acts, fields=values, rows_per_example=plan.rows_per_example, source=source)


def capture_dataset(model: Model, params: Any, dataset: Dataset, *, num_batches: int,
                    batch_size: int, data_key: jax.Array, start_step: int = 0,
                    sites: Iterable[str] | str = ALL_SITES, max_rows: int | None = None,
                    seed: int = 0, position: int | None = None, fields: Sequence[str] | None = None,
                    interventions: Mapping[str, Any] | None = None,
                    devices: Sequence[jax.Device] | None = None, source: str = "") -> Captures:
  """Captures activation rows over ``num_batches`` batches drawn from ``dataset``'s sampler.

  Batch t is ``dataset.sample(dataset.arrays, data_key, start_step + t, batch_size)``, sampled
  inside the compiled call; example indices count along the stream (batch t holds examples
  t * batch_size ...). Other arguments as for `capture`.
  """
  what = f"capture_dataset ({model.name}, {dataset.name})"
  if num_batches < 1 or batch_size < 1:
    raise BadInputError(f"{what}: num_batches={num_batches} and batch_size={batch_size} must be >= 1")
  abstract = jax.eval_shape(lambda a, k: dataset.sample(a, k, jnp.asarray(start_step), batch_size),
                            dataset.arrays, data_key)
  field_names = _field_names(fields, abstract, what=what)
  plan = _plan_rows(model, params, abstract["inputs"], sites, position, what=what)
  mesh = _batch_mesh(devices)
  num_devices = mesh.devices.size
  padded_size = -(-batch_size // num_devices) * num_devices
  kept = _kept_rows(num_batches * batch_size * plan.rows_per_example, max_rows, seed)
  local, counts = _chunk_rows(kept, batch_size * plan.rows_per_example, num_batches)

  row_sharding = NamedSharding(mesh, PartitionSpec("batch"))
  replicated = NamedSharding(mesh, PartitionSpec())

  def sample_and_gather(p, arrays, key, step, rows):
    drawn = dataset.sample(arrays, key, step, batch_size)
    drawn = {name: _pad_traced(jnp.asarray(drawn[name]), padded_size)
             for name in ("inputs",) + field_names}
    drawn = jax.lax.with_sharding_constraint(drawn, row_sharding)
    return _capture_rows(model, p, drawn, plan, field_names, rows, interventions)

  gather = jax.jit(sample_and_gather)
  params = jax.device_put(params, replicated)
  arrays = jax.device_put(dataset.arrays, replicated)
  data_key = jax.device_put(data_key, replicated)

  def run_chunk(index):
    return gather(params, arrays, data_key, jnp.asarray(start_step + index, jnp.int32),
                  jax.device_put(local[index], replicated))

  acts, values = _collect(run_chunk, num_batches, counts, plan, field_names)
  values.update(_index_fields(kept, plan))
  source = source or f"{dataset.name}: {num_batches} x {batch_size} from step {start_step}"
  return Captures(acts=acts, fields=values, rows_per_example=plan.rows_per_example, source=source)
