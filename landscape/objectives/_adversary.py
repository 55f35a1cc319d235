"""Adversarial removal: a probe learns to read a concept at a site while the model learns to defeat it.

The probe (linear, or one hidden ReLU layer) reads the site's activation through gradient reversal
(`landscape.interventions.reverse_gradient`, Ganin and Lempitsky 2015; Elazar and Goldberg 2018). Its
parameters are the term's own state: the composition trains them with the term's optimizer on the
gradient of the probe's cross-entropy (unweighted), while the model receives the weighted gradient
through the reversal, i.e. ``-weight`` times the gradient of that same cross-entropy: the probe
minimises it, the model maximises it.

Note what Elazar and Goldberg found: an adversary at chance during training does not mean the
concept is gone; a probe trained afterwards (`landscape.directions.decodability`) may still read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from landscape.interventions import reverse_gradient
from landscape.objectives._composition import Term
from landscape.objectives._composition import TermInputs
from landscape.objectives._composition import Weight
from landscape.objectives._fields import batch_field
from landscape.sites import BadInputError

Probe = Mapping[str, Mapping[str, jax.Array]]


def init_probe(key: jax.Array, width: int, num_classes: int, hidden_size: int | None = None) -> Probe:
  """Probe params: {"output": {"kernel" (H or D, C), "bias" (C,)}} and, with a hidden layer,
  {"hidden": {"kernel" (D, H), "bias" (H,)}}; kernels LeCun-normal, biases zero, float32."""
  sizes = [width] + ([hidden_size] if hidden_size else []) + [num_classes]
  names = (["hidden"] if hidden_size else []) + ["output"]
  keys = jax.random.split(key, len(names))
  return {
      layer: {"kernel": jax.nn.initializers.lecun_normal()(layer_key, (size_in, size_out), jnp.float32),
              "bias": jnp.zeros((size_out,), jnp.float32)}
      for layer, layer_key, size_in, size_out in zip(names, keys, sizes[:-1], sizes[1:])
  }


def _dense(layer: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
  bias = layer["bias"]
  return x @ layer["kernel"] + jnp.reshape(bias, (1,) * (x.ndim - 1) + bias.shape)


def probe_logits(probe: Probe, acts: jax.Array) -> jax.Array:
  """(..., D) -> (..., C) logits of the probe, in float32."""
  x = acts.astype(jnp.float32)
  if "hidden" in probe:
    x = jax.nn.relu(_dense(probe["hidden"], x))
  return _dense(probe["output"], x)


def _concept_per_row(concept: jax.Array, act: jax.Array, *, term: str) -> jax.Array:
  """Labels shaped act.shape[:-1]: per position as given, or one per example repeated over positions."""
  leading = act.shape[:-1]
  if concept.shape == leading:
    return concept.astype(jnp.int32)
  if concept.shape == leading[:1]:
    expanded = jnp.reshape(concept, concept.shape + (1,) * (len(leading) - 1))
    return jnp.broadcast_to(expanded, leading).astype(jnp.int32)
  raise BadInputError(f"loss term {term!r}: concept labels of shape {concept.shape} match neither the "
                      f"examples nor the positions of an activation of shape {act.shape}")


def adversarial_probe(site: str, *, width: int, num_classes: int = 2, hidden_size: int | None = None,
                      weight: Weight = 1.0, optimizer: optax.GradientTransformation | None = None,
                      inputs_key: str | None = "probe_inputs", concept_key: str = "probe_concept",
                      position: int | None = None, name: str = "adversary") -> Term:
  """A probe that reads an integer concept at ``site`` through gradient reversal.

  Value: the probe's mean cross-entropy on the probe set (over examples and, for (B, T, D) sites,
  positions). The composition adds ``weight * value`` to the reported total, but because of the
  reversal the model's gradient is ``-weight * d value / d params``: a positive weight trains the
  model to defeat the probe. The probe's state gets ``d value / d probe`` and steps with
  ``optimizer``. Metrics: ``accuracy`` and ``loss`` (the probe's).

  Args:
    site: where the probe reads. width: the site's width D (the probe's input size).
    num_classes: C, the concept's classes; labels are ints in [0, C), per example (B,) or per
      position (B, T).
    hidden_size: None for a linear probe (default), else one hidden ReLU layer of this size.
    weight: the adversary's strength lambda (float or optax schedule).
    optimizer: the probe's; default ``optax.adam(1e-2)`` (a small probe should keep up with the model).
    inputs_key, concept_key: the batch fields of the probe set, one in which the concept and the
      label are independent (else defeating the probe costs the task). The model is rerun on
      ``batch[inputs_key]`` with the training interventions. With ``inputs_key=None`` the probe
      reads the training batch's own activation and labels ``batch[concept_key]``.
    position: for a (B, T, D) site, read only this position (e.g. -1, where the answer is read out)
      with one label per example; None reads every position.
  """
  optimizer = optimizer if optimizer is not None else optax.adam(1e-2)

  def init(key: jax.Array, params: Any) -> Probe:
    del params
    return init_probe(key, width, num_classes, hidden_size)

  def fn(inputs: TermInputs):
    concept = batch_field(inputs.batch, concept_key, term=name)
    if inputs_key is None:
      act = inputs.acts[site]
    else:
      _, acts = inputs.forward(inputs.params, batch_field(inputs.batch, inputs_key, term=name),
                               capture=[site])
      act = acts[site]
    if position is not None:
      act = act[:, position]
    if act.shape[-1] != width:
      raise BadInputError(f"loss term {name!r}: width={width}, but site {site!r} has shape {act.shape}")
    labels = _concept_per_row(concept, act, term=name)
    logits = probe_logits(inputs.state, reverse_gradient(act, jnp.ones((), jnp.float32)))
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
    return loss, {"accuracy": accuracy, "loss": loss}

  return Term(name=name, fn=fn, weight=weight, sites=(site,), init=init, optimizer=optimizer)
