"""Datasets as pure functions of (data key, step) -> batch.

A `Dataset` samples a training batch inside the compiled step, from arrays passed in as arguments (so
a run is reproducible from its seed and step alone, and resuming needs no iterator state), and holds
named evaluation sets as fixed arrays. A batch is a dict of arrays with a leading batch axis:
``inputs`` and ``labels`` at least; tasks add their own fields (``concept``, ``mask``, ...).

Adding a dataset takes one call: `array_dataset` for arrays in memory, `generator_dataset` for data
drawn fresh from a key at every step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from landscape.sites import BadInputError

Batch = dict[str, Any]


# (arrays, data_key, step, batch_size, hparams) -> batch: the one signature of a dataset's sampler.
Sampler = Callable[[Any, jax.Array, jax.Array, int, Mapping[str, jax.Array]], Batch]


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A training stream and named evaluation sets.

  Attributes:
    name: for messages and reports.
    sampler: (arrays, data_key, step, batch_size, hparams) -> batch, pure and jittable. ``hparams``
      is the run's hyper-parameters (name -> int32 scalar for an integer, float32 otherwise:
      ``state.hparams``), so runs trained together can see different data (a training-set size per run, say); a sampler that reads
      none ignores it. Call it through `sample`.
    arrays: what the sampler reads (a pytree of arrays, possibly empty). Passed to the compiled step
      as an argument, never baked into it as a constant.
    eval_sets: name -> batch of NumPy arrays (every example is evaluated).
    info: free-form facts about the data (sizes, the shortcut's definition) for reports.
  """

  name: str
  sampler: Sampler
  arrays: Any
  eval_sets: Mapping[str, Batch]
  info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def sample(self, arrays: Any, data_key: jax.Array, step: jax.Array, batch_size: int,
             hparams: Mapping[str, jax.Array] | None = None) -> Batch:
    """Batch ``step`` of the stream keyed by ``data_key``; ``hparams`` default to none."""
    return self.sampler(arrays, data_key, step, batch_size, {} if hparams is None else hparams)

  def example_batch(self, batch_size: int = 2, hparams: Mapping[str, Any] | None = None) -> Batch:
    """A small concrete batch, for shapes and initialisation."""
    return self.sample(self.arrays, jax.random.PRNGKey(0), jnp.asarray(0), batch_size, hparams)


_FEISTEL_ROUNDS = 4


def _mix32(x: jax.Array, key: jax.Array) -> jax.Array:
  """A 32-bit integer hash of ``x`` under ``key`` (xorshift-multiply, as in splitmix/murmur finalisers)."""
  x = x ^ key
  x = (x ^ (x >> 16)) * jnp.uint32(0x7FEB352D)
  x = (x ^ (x >> 15)) * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def permuted_indices(positions: jax.Array, num_examples: int, key: jax.Array) -> jax.Array:
  """``permutation[positions]`` for a pseudo-random permutation of range(num_examples) set by ``key``.

  A balanced Feistel network over the smallest even-bit domain covering ``num_examples`` is a
  bijection of that domain; walking the cycle until the value falls below ``num_examples`` makes it
  a bijection of range(num_examples). It costs O(len(positions)), where `jax.random.permutation`
  sorts all num_examples keys at every call.
  """
  half_bits = max(1, (max(num_examples - 1, 1).bit_length() + 1) // 2)
  half_mask = jnp.uint32((1 << half_bits) - 1)
  round_keys = jax.random.bits(key, (_FEISTEL_ROUNDS,), jnp.uint32)

  def encrypt(x):
    left, right = x >> half_bits, x & half_mask
    for round_index in range(_FEISTEL_ROUNDS):
      left, right = right, left ^ (_mix32(right, round_keys[round_index]) & half_mask)
    return (left << half_bits) | right

  def still_outside(x):
    return jnp.any(x >= num_examples)

  def walk(x):
    return jnp.where(x >= num_examples, encrypt(x), x)

  first = encrypt(positions.astype(jnp.uint32))
  return jax.lax.while_loop(still_outside, walk, first).astype(jnp.int32)


def array_dataset(name: str, train: Batch, eval_sets: Mapping[str, Batch], *,
                  info: Mapping[str, Any] | None = None) -> Dataset:
  """A dataset over arrays in memory, reshuffled every epoch.

  Step t of epoch e = t // (N // batch_size) takes positions [(t mod steps_per_epoch) * batch_size,
  + batch_size) of a pseudo-random permutation drawn from ``fold_in(data_key, e)`` (see
  `permuted_indices`); the last N mod batch_size examples of each permutation are skipped
  (different ones each epoch).
  """
  train = {key: np.asarray(value) for key, value in train.items()}
  sizes = {key: value.shape[0] for key, value in train.items()}
  if len(set(sizes.values())) != 1:
    raise BadInputError(f"dataset {name!r}: training fields have different lengths {sizes}")
  num_examples = next(iter(sizes.values()))
  for set_name, batch in eval_sets.items():
    lengths = {key: np.shape(value)[0] for key, value in batch.items()}
    if len(set(lengths.values())) != 1:
      raise BadInputError(f"dataset {name!r}: eval set {set_name!r} fields have different lengths {lengths}")

  def sample(arrays: Batch, data_key: jax.Array, step: jax.Array, batch_size: int,
             hparams: Mapping[str, jax.Array]) -> Batch:
    del hparams
    if batch_size > num_examples:
      raise BadInputError(f"dataset {name!r}: batch_size {batch_size} > {num_examples} training examples")
    steps_per_epoch = num_examples // batch_size
    epoch, position = jnp.divmod(step, steps_per_epoch)
    positions = position * batch_size + jnp.arange(batch_size)
    indices = permuted_indices(positions, num_examples, jax.random.fold_in(data_key, epoch))
    return {key: jnp.take(value, indices, axis=0) for key, value in arrays.items()}

  return Dataset(name=name, sampler=sample, arrays=train,
                 eval_sets={key: dict(value) for key, value in eval_sets.items()},
                 info=dict(info or {}, num_train=num_examples))


def generator_dataset(name: str, generate: Callable[[jax.Array, int], Batch],
                      eval_sets: Mapping[str, Batch], *,
                      info: Mapping[str, Any] | None = None) -> Dataset:
  """A dataset drawn fresh at every step: batch t is ``generate(fold_in(data_key, t), batch_size)``."""

  def sample(arrays: Any, data_key: jax.Array, step: jax.Array, batch_size: int,
             hparams: Mapping[str, jax.Array]) -> Batch:
    del arrays, hparams
    return generate(jax.random.fold_in(data_key, step), batch_size)

  return Dataset(name=name, sampler=sample, arrays={}, eval_sets=dict(eval_sets),
                 info=dict(info or {}))


def with_probe_fields(dataset: Dataset, probe: Dataset, *, fields: tuple[str, ...] = ("inputs", "concept"),
                      prefix: str = "probe_", probe_batch_size: int | None = None) -> Dataset:
  """``dataset`` whose batches also carry a batch of ``probe`` under ``prefix + field``.

  For terms that train on a probe set drawn independently of the training batch, such as an
  adversarial probe that needs examples whose concept is independent of the label. The probe batch
  comes from ``fold_in(data_key, 1)``, the training batch from ``data_key`` unchanged, so adding
  probe fields leaves the training batches as they were.
  """

  def sample(arrays, data_key, step, batch_size, hparams):
    batch = dict(dataset.sample(arrays["train"], data_key, step, batch_size, hparams))
    probe_batch = probe.sample(arrays["probe"], jax.random.fold_in(data_key, 1), step,
                               probe_batch_size or batch_size, hparams)
    batch.update({prefix + field: probe_batch[field] for field in fields})
    return batch

  return dataclasses.replace(dataset, sampler=sample,
                             arrays={"train": dataset.arrays, "probe": probe.arrays},
                             info=dict(dataset.info, probe=probe.name))


def subset_sampler(dataset: Dataset, *, size_key: str = "train_size") -> Dataset:
  """``dataset`` trained on its first ``hparams[size_key]`` examples, drawn with replacement.

  Runs of one program can then see training sets of different sizes (a sample-efficiency curve):
  each batch is ``batch_size`` uniform draws from the run's first n examples.
  """

  def sample(arrays, data_key, step, batch_size, hparams):
    if size_key not in hparams:
      raise BadInputError(f"dataset {dataset.name!r} samples from the first hparams[{size_key!r}] "
                          f"examples, but the run's hyper-parameters are {sorted(hparams)}")
    size = hparams[size_key].astype(jnp.int32)
    indices = jax.random.randint(jax.random.fold_in(data_key, step), (batch_size,), 0, size)
    return {key: jnp.take(value, indices, axis=0) for key, value in arrays.items()}

  return dataclasses.replace(dataset, sampler=sample,
                             info=dict(dataset.info, sampling=f"first hparams[{size_key!r}] examples"))


def split_indices(num_examples: int, fractions: Mapping[str, float], *, seed: int) -> dict[str, np.ndarray]:
  """Disjoint index sets covering range(num_examples), in the given fractions (the last takes the rest)."""
  order = np.random.default_rng(seed).permutation(num_examples)
  names = list(fractions)
  bounds = np.cumsum([int(round(fractions[key] * num_examples)) for key in names[:-1]])
  return dict(zip(names, np.split(order, bounds)))
