"""Penalties on the parameters themselves."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from landscape.objectives._composition import Term
from landscape.objectives._composition import TermInputs
from landscape.objectives._composition import Weight


def l2_penalty(*, weight: Weight = 1.0, name: str = "l2") -> Term:
  """``sum of theta^2`` over every parameter (weights and biases), to be scaled by ``weight``.

  Added to the loss, unlike decoupled weight decay (``optax.adamw``): Adam rescales its gradient with
  the rest. Ross et al. (2017)'s reference code adds 1e-4 x ||theta||^2. Metric ``param_norm``:
  ||theta||.
  """

  def fn(inputs: TermInputs):
    squared = sum(jnp.sum(jnp.square(leaf.astype(jnp.float32)))
                  for leaf in jax.tree.leaves(inputs.params))
    squared = jnp.asarray(squared, jnp.float32)
    return squared, {"param_norm": jnp.sqrt(squared)}

  return Term(name=name, fn=fn, weight=weight)
