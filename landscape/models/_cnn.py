"""A small convolutional net for tiny images, with a site after every layer's activation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from flax import nnx

from landscape.models._adapter import Model
from landscape.models._adapter import from_nnx
from landscape.models._mlp import _dense_site_links
from landscape.sites import ParamLink
from landscape.sites import Sites
from landscape.sites import BadInputError


class CNN(nnx.Module):
  """3x3 'SAME' convolutions with relu, then dense hidden layers with relu, then a linear readout.

  Inputs are images (B, H, W) or (B, H, W, C) matching ``input_shape``; outputs are logits
  (B, num_classes). With ``pool``, each convolution's relu output is max-pooled 2x2 (stride 2) after
  its site, so a site holds its convolution's output before pooling (H_i = H // 2**i).

  Sites: ``conv_{i}``, (B, H_i, W_i, channels[i]) after conv i's relu: its directions live in
  channel space, at every position. Then ``hidden_{j}``, (B, hidden_sizes[j]) after dense layer j's
  relu.

  Links: conv i writes conv_i (kernel axis 3, bias axis 0) and conv i + 1 reads it (kernel axis 2);
  the dense layers link as in the MLP. The first dense layer reads the last conv site only through
  the flatten, which mixes positions and channels into one axis, so that read link is left out.
  """

  def __init__(self, input_shape: Sequence[int], channels: Sequence[int],
               hidden_sizes: Sequence[int], num_classes: int, *, rngs: nnx.Rngs,
               pool: bool = False):
    input_shape = tuple(input_shape)
    if len(input_shape) not in (2, 3):
      raise BadInputError(f"CNN: input_shape must be (H, W) or (H, W, C), got {input_shape}")
    height, width = input_shape[:2]
    in_channels = input_shape[2] if len(input_shape) == 3 else 1
    self.input_shape = input_shape
    self.image_shape = (height, width, in_channels)
    self.pool = pool
    conv_channels = [in_channels, *channels]
    self.convs = nnx.List([
        nnx.Conv(c_in, c_out, kernel_size=(3, 3), padding="SAME", rngs=rngs)
        for c_in, c_out in zip(conv_channels[:-1], conv_channels[1:])
    ])
    if pool:
      for _ in channels:
        height, width = height // 2, width // 2
      if height == 0 or width == 0:
        raise BadInputError(f"CNN: {len(channels)} 2x2 poolings leave nothing of {input_shape}")
    widths = [height * width * conv_channels[-1], *hidden_sizes]
    self.hidden = nnx.List([
        nnx.Linear(width_in, width_out, rngs=rngs)
        for width_in, width_out in zip(widths[:-1], widths[1:])
    ])
    self.output = nnx.Linear(widths[-1], num_classes, rngs=rngs)

  def conv_site_names(self) -> tuple[str, ...]:
    return tuple(f"conv_{i}" for i in range(len(self.convs)))

  def hidden_site_names(self) -> tuple[str, ...]:
    return tuple(f"hidden_{j}" for j in range(len(self.hidden)))

  def site_names(self) -> tuple[str, ...]:
    return self.conv_site_names() + self.hidden_site_names()

  def site_links(self) -> dict[str, tuple[ParamLink, ...]]:
    links = {}
    conv_names = self.conv_site_names()
    for i, name in enumerate(conv_names):
      links[name] = (
          ParamLink(("convs", str(i), "kernel"), axis=3, role="writes"),
          ParamLink(("convs", str(i), "bias"), axis=0, role="writes"),
      )
      if i + 1 < len(conv_names):
        links[name] += (ParamLink(("convs", str(i + 1), "kernel"), axis=2, role="reads"),)
    layer_paths = [("hidden", str(j)) for j in range(len(self.hidden))] + [("output",)]
    links.update(_dense_site_links(layer_paths, self.hidden_site_names()))
    return links

  def __call__(self, inputs: jax.Array, sites: Sites) -> jax.Array:
    x = inputs[..., None] if len(self.input_shape) == 2 else inputs
    if x.shape[1:] != self.image_shape:
      raise BadInputError(f"CNN: inputs {inputs.shape} do not match input_shape {self.input_shape}")
    for name, conv in zip(self.conv_site_names(), self.convs):
      x = sites(name, jax.nn.relu(conv(x)))
      if self.pool:
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
    x = x.reshape(x.shape[0], math.prod(x.shape[1:]))
    for name, layer in zip(self.hidden_site_names(), self.hidden):
      x = sites(name, jax.nn.relu(layer(x)))
    return self.output(x)


def cnn(input_shape: Sequence[int], channels: Sequence[int], hidden_sizes: Sequence[int],
        num_classes: int, *, pool: bool = False) -> Model:
  """A `CNN` as a `Model`; params are {"convs": {"0": ...}, "hidden": {"0": ...}, "output": ...}."""
  input_shape, channels, hidden_sizes = tuple(input_shape), tuple(channels), tuple(hidden_sizes)
  return from_nnx(
      lambda rngs: CNN(input_shape, channels, hidden_sizes, num_classes, rngs=rngs, pool=pool),
      name="cnn")
