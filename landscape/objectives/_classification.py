"""The task loss and per-example evaluation metrics for classifiers and next-token models.

Outputs are logits (B, C) with labels (B,), or logits (B, T, V) with labels (B, T) and an optional
``label_mask`` (B, T) selecting the scored positions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from landscape.objectives._composition import Term
from landscape.objectives._composition import TermInputs
from landscape.objectives._composition import Weight
from landscape.sites import BadInputError

PerExample = tuple[jax.Array, jax.Array]  # (values (B,), weights (B,))


def _label_mask(logits: jax.Array, batch: Mapping[str, Any]) -> jax.Array:
  labels = batch["labels"]
  if logits.ndim != labels.ndim + 1:
    raise BadInputError(f"logits of shape {logits.shape} do not match labels of shape {labels.shape}")
  mask = batch.get("label_mask")
  return jnp.ones(labels.shape, jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)


def per_example_cross_entropy(logits: jax.Array, batch: Mapping[str, Any]) -> PerExample:
  """Mean cross-entropy over each example's scored positions, and their count as its weight."""
  mask = _label_mask(logits, batch)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["labels"])
  return _per_example_mean(losses, mask)


def per_example_accuracy(logits: jax.Array, batch: Mapping[str, Any]) -> PerExample:
  """Fraction of each example's scored positions where the arg-max is the label."""
  mask = _label_mask(logits, batch)
  correct = (jnp.argmax(logits, axis=-1) == batch["labels"]).astype(jnp.float32)
  return _per_example_mean(correct, mask)


def _per_example_mean(values: jax.Array, mask: jax.Array) -> PerExample:
  if values.ndim == 1:
    return values * mask, mask
  axes = tuple(range(1, values.ndim))
  counts = jnp.sum(mask, axis=axes)
  return jnp.sum(values * mask, axis=axes) / jnp.maximum(counts, 1.0), counts


def weighted_mean(per_example: PerExample) -> jax.Array:
  values, weights = per_example
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


def cross_entropy(name: str = "task", *, weight: Weight = 1.0, label_smoothing: float = 0.0) -> Term:
  """The task loss: mean cross-entropy over scored positions; reports accuracy as a metric."""

  def fn(inputs: TermInputs):
    logits = inputs.outputs
    if label_smoothing:
      num_classes = logits.shape[-1]
      targets = optax.smooth_labels(jax.nn.one_hot(inputs.batch["labels"], num_classes), label_smoothing)
      losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
      loss = weighted_mean(_per_example_mean(losses, _label_mask(logits, inputs.batch)))
    else:
      loss = weighted_mean(per_example_cross_entropy(logits, inputs.batch))
    return loss, {"accuracy": weighted_mean(per_example_accuracy(logits, inputs.batch))}

  return Term(name=name, fn=fn, weight=weight)


CLASSIFICATION_METRICS = {"loss": per_example_cross_entropy, "accuracy": per_example_accuracy}
