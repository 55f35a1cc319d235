"""Many SAEs in one program: SAEs of one architecture and shape stacked on a leading axis of every
leaf, so that a loss, a gradient step or an optimizer update is vmapped over them:

    stacked = stack_saes([init_sae(key, "topk", 64, 1024, k=8) for key in keys])
    step = jax.vmap(train_step, in_axes=(0, 0, None))   # (sae, opt_state, shared batch)

Different k values stack as one static k (the largest) and a traced per-SAE k (``k=`` of the
TopK and BatchTopK losses); several seeds, learning rates (``optax.inject_hyperparams``) and loss
coefficients stack as they are. Different widths do not: their arrays differ in shape.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from landscape.sae._architectures import SAE
from landscape.sites import BadInputError


def stack_saes(saes: Any) -> SAE:
  """SAEs of one architecture, one shape and equal static hyper-parameters, stacked on a new
  leading axis of every leaf, to vmap a loss or a step over them.

  What can differ: every array (seeds, a different init, data-dependent b_dec), and whatever a
  loss or an optimizer takes as a traced value (coefficients, learning rates through
  ``optax.inject_hyperparams``, a per-SAE ``k`` <= the static k, see `topk_loss`). What cannot:
  the architecture, d_in and d_sae (widths differ: train them side by side, unstacked), and the
  static fields (k as the maximum, the JumpReLU bandwidth, apply_b_dec_to_input, top_k_method).

  Raises:
    BadInputError: naming the first SAE that differs and how.
  """
  saes = list(saes)
  if not saes:
    raise BadInputError("stack_saes: no SAEs given")
  first = saes[0]
  first_def = jax.tree_util.tree_structure(first)
  first_shapes = [leaf.shape for leaf in jax.tree_util.tree_leaves(first)]
  for index, sae in enumerate(saes[1:], start=1):
    if type(sae) is not type(first):
      raise BadInputError(f"stack_saes: SAE {index} is a {type(sae).__name__}, SAE 0 a "
                          f"{type(first).__name__}")
    if jax.tree_util.tree_structure(sae) != first_def:
      raise BadInputError(f"stack_saes: SAE {index}'s static fields differ from SAE 0's: "
                          f"{jax.tree_util.tree_structure(sae)} vs {first_def}")
    shapes = [leaf.shape for leaf in jax.tree_util.tree_leaves(sae)]
    if shapes != first_shapes:
      raise BadInputError(f"stack_saes: SAE {index} has leaf shapes {shapes}, SAE 0 "
                          f"{first_shapes}")
  return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *saes)


def unstack_saes(stacked: SAE) -> list[SAE]:
  """The SAEs of `stack_saes`' result, in order."""
  count = stacked.b_dec.shape[0]
  return [jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], stacked) for i in range(count)]
