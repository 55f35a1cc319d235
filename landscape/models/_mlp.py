"""A multi-layer perceptron with a site after every hidden activation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from flax import nnx

from landscape.models._adapter import Model
from landscape.models._adapter import from_nnx
from landscape.sites import ParamLink
from landscape.sites import Sites
from landscape.sites import BadInputError


def _dense_site_links(layer_paths: Sequence[tuple[str, ...]], site_names: Sequence[str],
                      ) -> dict[str, tuple[ParamLink, ...]]:
  """Links of a stack of dense layers whose site i sits between layer i and layer i + 1.

  Args:
    layer_paths: the params path of every dense layer, in forward order; one more than sites.
    site_names: the site after each layer but the last.

  Returns:
    site -> (layer i kernel writes on axis 1, layer i bias writes on axis 0, layer i + 1 kernel
    reads on axis 0).
  """
  if len(layer_paths) != len(site_names) + 1:
    raise BadInputError(f"{len(layer_paths)} layers cannot surround {len(site_names)} sites")
  links = {}
  for name, writer, reader in zip(site_names, layer_paths[:-1], layer_paths[1:]):
    links[name] = (
        ParamLink(writer + ("kernel",), axis=1, role="writes"),
        ParamLink(writer + ("bias",), axis=0, role="writes"),
        ParamLink(reader + ("kernel",), axis=0, role="reads"),
    )
  return links


class MLP(nnx.Module):
  """Dense layers with an activation after each hidden one, then a linear readout.

  Inputs (B, ...) are flattened to (B, in_features); outputs are logits (B, num_classes).
  Sites ``hidden_{i}`` hold hidden layer i after its activation, (B, hidden_sizes[i]).

  ``init_scale``: None for flax's initialisers (LeCun-normal kernels, zero biases); a float s draws
  every weight and bias as s x N(0, 1), as Ross et al. (2017)'s reference code does with s = 0.1.
  """

  def __init__(self, in_features: int, hidden_sizes: Sequence[int], num_classes: int, *,
               rngs: nnx.Rngs, activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
               init_scale: float | None = None):
    widths = [in_features, *hidden_sizes, num_classes]
    initialisers = {}
    if init_scale is not None:
      normal = nnx.initializers.normal(stddev=init_scale)
      initialisers = dict(kernel_init=normal, bias_init=normal)
    layers = [nnx.Linear(width_in, width_out, rngs=rngs, **initialisers)
              for width_in, width_out in zip(widths[:-1], widths[1:])]
    self.hidden = nnx.List(layers[:-1])
    self.output = layers[-1]
    self.activation = activation

  def site_names(self) -> tuple[str, ...]:
    return tuple(f"hidden_{i}" for i in range(len(self.hidden)))

  def site_links(self) -> dict[str, tuple[ParamLink, ...]]:
    layer_paths = [("hidden", str(i)) for i in range(len(self.hidden))] + [("output",)]
    return _dense_site_links(layer_paths, self.site_names())

  def __call__(self, inputs: jax.Array, sites: Sites) -> jax.Array:
    x = inputs.reshape(inputs.shape[0], -1)
    for name, layer in zip(self.site_names(), self.hidden):
      x = sites(name, self.activation(layer(x)))
    return self.output(x)


def mlp(in_features: int, hidden_sizes: Sequence[int], num_classes: int, *,
        activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
        init_scale: float | None = None) -> Model:
  """An `MLP` as a `Model`; params are {"hidden": {"0": {"kernel", "bias"}, ...}, "output": ...}.

  ``init_scale``: see `MLP` (None: flax's initialisers; s: every weight and bias s x N(0, 1)).
  """
  hidden_sizes = tuple(hidden_sizes)
  if init_scale is not None and not init_scale > 0:
    raise BadInputError(f"mlp: init_scale={init_scale!r}; expected None or a positive float")
  return from_nnx(
      lambda rngs: MLP(in_features, hidden_sizes, num_classes, rngs=rngs, activation=activation,
                       init_scale=init_scale),
      name="mlp")
