"""Penzai models as `Model`s: site layers inserted with selectors, parameters as a nested dict.

A penzai model is a pytree of layers called as ``layer(x, **side_inputs)``, where every combinator
forwards the side inputs to its children. `SiteLayer` is a layer that, when the side input
``landscape_sites`` holds a `Sites` object, calls it with its site name on the activation (feature
axis last) and carries on with the value returned, so the interventions and captures of a forward
pass reach penzai models exactly as they reach NNX ones. Insert site layers anywhere with penzai
selectors::

    model = pz.select(model).at_instances_of(pz.nn.Elementwise).insert_after(
        site_layer("hidden", feature_axis="neurons"))

`from_penzai` wraps a model (or a builder of one) as a `Model`: params are the penzai parameters'
arrays in a nested dict (each label split on "/"), and ``apply`` rebinds them into the model's
unbound skeleton. `instrument_transformer` names the sites of penzai's own transformers
(``embed``, ``blocks.{i}.attn_out``, ``blocks.{i}.mlp_hidden``, ``blocks.{i}.mlp_out``,
``blocks.{i}.resid_post``), `penzai_transformer` builds one from a config, and `penzai_mlp` is a
penzai twin of `landscape.models.mlp` with the same params layout, sites and links.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from penzai import pz
from penzai.models.transformer import model_parts
from penzai.models.transformer.variants import gpt_neox
from penzai.models.transformer.variants import llamalike_common

from landscape.models._adapter import Model
from landscape.models._adapter import Params
from landscape.models._mlp import _dense_site_links
from landscape.sites import ParamLink
from landscape.sites import SiteShapeError
from landscape.sites import Sites
from landscape.sites import BadInputError

SITES_SIDE_INPUT = "landscape_sites"
TRANSFORMER_SITE_KINDS = ("attn_out", "mlp_hidden", "mlp_out", "resid_post")
_LEADING_AXES = ("batch", "seq")


@pz.pytree_dataclass
class SiteLayer(pz.nn.Layer):
  """A named site inside a penzai model: hands the activation to the forward pass's `Sites`.

  The activation is a `NamedArray`; the site sees a plain array with the named axes ordered as
  ``leading_axes`` (those present), then any other named axes, then ``feature_axis`` last (after
  any positional axes, which stay first). Without a ``landscape_sites`` side input the layer is the
  identity, so an instrumented model still runs as an ordinary penzai model.

  Attributes:
    site: the site's name.
    feature_axis: the named axis the site's directions live in (e.g. "embedding", "neurons").
    leading_axes: the order of the other axes (e.g. ("batch", "seq")).
  """

  site: str = dataclasses.field(metadata={"pytree_node": False})
  feature_axis: str = dataclasses.field(metadata={"pytree_node": False})
  leading_axes: tuple[str, ...] = dataclasses.field(default=_LEADING_AXES,
                                                    metadata={"pytree_node": False})

  def __call__(self, value: pz.nx.NamedArray, **side_inputs: Any) -> pz.nx.NamedArray:
    sites = side_inputs.get(SITES_SIDE_INPUT)
    if sites is None:
      return value
    named_shape = dict(value.named_shape)
    if self.feature_axis not in named_shape:
      raise SiteShapeError(f"penzai site {self.site!r}: feature axis {self.feature_axis!r} is not "
                           f"among the activation's axes {named_shape}")
    others = [axis for axis in named_shape
              if axis not in self.leading_axes and axis != self.feature_axis]
    order = [axis for axis in self.leading_axes if axis in named_shape] + others + [self.feature_axis]
    ordered = value.order_as(*order)
    act = sites(self.site, ordered.data_array)
    if act.shape != ordered.data_array.shape:
      raise SiteShapeError(f"penzai site {self.site!r}: the site returned shape {act.shape} for an "
                           f"activation of shape {ordered.data_array.shape} (axes {order})")
    return dataclasses.replace(ordered, data_array=act)

  def treescope_color(self) -> str:
    return "#d97ac6"


def site_layer(site: str, feature_axis: str, *,
               leading_axes: Sequence[str] = _LEADING_AXES) -> SiteLayer:
  """A `SiteLayer` to insert with penzai selectors (``.insert_after(site_layer(...))``)."""
  return SiteLayer(site=site, feature_axis=feature_axis, leading_axes=tuple(leading_axes))


def penzai_site_names(model: Any) -> tuple[str, ...]:
  """The names of the `SiteLayer`s in ``model``, in tree (forward) order.

  Raises:
    ValueError: a name used twice, or a site inside a `LayerStack` (its scan would capture traced
      values of the loop body).
  """
  for stack in pz.select(model).at_instances_of(pz.nn.LayerStack).get_sequence():
    inside = [layer.site for layer in pz.select(stack).at_instances_of(SiteLayer).get_sequence()]
    if inside:
      raise BadInputError(f"penzai model: site(s) {inside} sit inside a LayerStack (a scan); put "
                          "sites outside it, or build the model with use_layer_stack=False")
  names = tuple(layer.site for layer in pz.select(model).at_instances_of(SiteLayer).get_sequence())
  duplicates = sorted({name for name in names if names.count(name) > 1})
  if duplicates:
    raise BadInputError(f"penzai model: site name(s) {duplicates} appear more than once")
  return names


def _nest(flat: Mapping[str, Any], *, what: str) -> Params:
  """{"a/b/c.weights": x} -> {"a": {"b": {"c.weights": x}}}."""
  nested: dict[str, Any] = {}
  for label, value in flat.items():
    *parents, leaf = label.split("/")
    node = nested
    for depth, key in enumerate(parents):
      node = node.setdefault(key, {})
      if not isinstance(node, dict):
        raise BadInputError(f"{what}: parameter label {label!r} nests under "
                            f"{'/'.join(parents[:depth + 1])!r}, which is itself a parameter")
    if leaf in node:
      raise BadInputError(f"{what}: parameter label {label!r} collides with a group of parameters")
    node[leaf] = value
  return nested


def _lookup(params: Params, label: str) -> Any:
  node = params
  for key in label.split("/"):
    node = node[key]
  return node


@dataclasses.dataclass(frozen=True)
class _ParamSlot:
  """How one penzai parameter's value is rebuilt from its array (e.g. a `NamedArray` wrapper)."""

  label: str
  treedef: Any
  metadata: dict[Any, Any]


def _param_arrays(values: Sequence[pz.ParameterValue], *, what: str) -> dict[str, Any]:
  arrays = {}
  for value in values:
    leaves = jax.tree_util.tree_leaves(value.value)
    if len(leaves) != 1:
      raise BadInputError(f"{what}: parameter {value.label!r} holds {len(leaves)} arrays; one array per "
                          "parameter is supported")
    arrays[value.label] = leaves[0]
  return arrays


def from_penzai(build: Callable[[jax.Array | None], pz.nn.Layer] | pz.nn.Layer, *,
                wrap_inputs: Callable[[Any], Any], unwrap_outputs: Callable[[Any], Any],
                side_inputs: Mapping[str, Any] | None = None,
                site_links: Mapping[str, tuple[ParamLink, ...]] | None = None,
                name: str = "penzai") -> Model:
  """Wraps a penzai model with `SiteLayer`s as a `Model`.

  Args:
    build: ``init_base_rng -> model``, called with None for the skeleton (penzai leaves parameter
      slots for a None key) and with a key by ``init``; or a built model, whose parameter values
      ``init`` returns whatever the key (a pretrained model).
    wrap_inputs: plain inputs (e.g. tokens (B, T)) -> the model's input (e.g. a `NamedArray`).
    unwrap_outputs: the model's output -> plain outputs (e.g. logits (B, T, V)).
    side_inputs: extra side inputs for every call (constants).
    site_links: site -> `ParamLink`s, with paths in the params dict, for the gradient transforms.
    name: for messages.

  Returns:
    A `Model` whose params are {label split on "/": array} and whose sites are the model's
    `SiteLayer`s in forward order.

  Raises:
    TypeError: the model holds state variables, or a parameter is not a single array.
    ValueError: duplicate site names, or parameter labels that collide once nested.
  """
  what = f"from_penzai ({name})"
  if isinstance(build, pz.nn.Layer):
    built = build
    skeleton, values = pz.unbind_params(built, freeze=True)
    fixed = _nest(_param_arrays(values, what=what), what=what)
    abstract_values = values
    builder = None
  else:
    builder = build
    skeleton, _ = pz.unbind_params(builder(None), freeze=True)
    abstract_values = jax.eval_shape(
        lambda key: pz.unbind_params(builder(key), freeze=True)[1], jax.random.PRNGKey(0))
  _, state_variables = pz.unbind_state_vars(skeleton)
  if state_variables:
    raise BadInputError(f"{what}: the model holds state variables "
                        f"{[variable.label for variable in state_variables][:5]}; only parameters are "
                        "supported")
  slots = tuple(_ParamSlot(label=value.label, treedef=jax.tree_util.tree_structure(value.value),
                           metadata=dict(value.metadata)) for value in abstract_values)
  labels = sorted(slot.label for slot in slots)
  _nest({label: None for label in labels}, what=what)
  site_names = penzai_site_names(skeleton)
  extra_side_inputs = dict(side_inputs or {})

  def init(key: jax.Array) -> Params:
    if builder is None:
      return jax.tree_util.tree_map(jnp.asarray, fixed)
    _, values = pz.unbind_params(builder(key), freeze=True)
    arrays = _param_arrays(values, what=what)
    if sorted(arrays) != labels:
      raise BadInputError(f"{what}: the builder made parameters {sorted(arrays)} for a key but "
                          f"{labels} without one")
    return _nest(arrays, what=what)

  def apply(params: Params, inputs: Any, sites: Sites | None = None) -> Any:
    values = [pz.ParameterValue(label=slot.label, metadata=slot.metadata,
                                value=slot.treedef.unflatten([_lookup(params, slot.label)]))
              for slot in slots]
    bound = pz.bind_variables(skeleton, values)
    outputs = bound(wrap_inputs(inputs), **extra_side_inputs,
                    **{SITES_SIDE_INPUT: sites if sites is not None else Sites()})
    return unwrap_outputs(outputs)

  return Model(init=init, apply=apply, site_names=site_names, site_links=dict(site_links or {}),
               name=name)


def instrument_transformer(model: model_parts.TransformerLM, *,
                           kinds: Sequence[str] = TRANSFORMER_SITE_KINDS,
                           embed: bool = True) -> model_parts.TransformerLM:
  """Inserts site layers into a penzai transformer (llama-like, Gemma, Mistral or GPT-NeoX).

  For block i: ``blocks.{i}.attn_out`` (the attention layer's output, before any post-attention
  norm and before it is added to the stream), ``blocks.{i}.mlp_hidden`` (the input of the MLP's
  output projection: after the activation, or the gated product for GLU MLPs; axis "neurons"),
  ``blocks.{i}.mlp_out`` (the MLP's output) and ``blocks.{i}.resid_post`` (the residual stream
  after the block). With ``embed``, ``embed`` is the stream entering block 0. Every site but
  mlp_hidden lives on axis "embedding"; activations are ordered (batch, seq, feature).

  Raises:
    ValueError: an unknown kind, a model with no `TransformerBlock` (e.g. one built with
      ``use_layer_stack=True``, whose blocks run under a scan), or sites already present.
  """
  unknown = sorted(set(kinds) - set(TRANSFORMER_SITE_KINDS))
  if unknown:
    raise BadInputError(f"instrument_transformer: unknown site kind(s) {unknown}; expected a subset of "
                        f"{TRANSFORMER_SITE_KINDS}")
  if pz.select(model).at_instances_of(SiteLayer).count():
    raise BadInputError(f"instrument_transformer: the model already has sites {penzai_site_names(model)}")
  if pz.select(model).at_instances_of(pz.nn.LayerStack).count():
    raise BadInputError("instrument_transformer: the model stacks its blocks in a LayerStack (a scan, "
                        "which sites cannot reach into); build it with use_layer_stack=False")
  blocks = pz.select(model).at_instances_of(model_parts.TransformerBlock)
  if not blocks.count():
    raise BadInputError("instrument_transformer: no TransformerBlock found")

  def instrument(index: int, block: model_parts.TransformerBlock) -> model_parts.TransformerBlock:
    prefix = f"blocks.{index}"
    feedforward = pz.select(block).at_instances_of(model_parts.TransformerFeedForward)
    if "mlp_hidden" in kinds:
      hidden = site_layer(f"{prefix}.mlp_hidden", "neurons")
      block = feedforward.apply(lambda layer: dataclasses.replace(
          layer, sublayers=[*layer.sublayers[:-1], hidden, layer.sublayers[-1]]))
    if "mlp_out" in kinds:
      block = pz.select(block).at_instances_of(model_parts.TransformerFeedForward).insert_after(
          site_layer(f"{prefix}.mlp_out", "embedding"))
    if "attn_out" in kinds:
      block = pz.select(block).at_instances_of(pz.nn.Attention).insert_after(
          site_layer(f"{prefix}.attn_out", "embedding"))
    if "resid_post" in kinds:
      block = dataclasses.replace(
          block, sublayers=[*block.sublayers, site_layer(f"{prefix}.resid_post", "embedding")])
    return block

  model = blocks.apply_with_selected_index(instrument)
  if embed:
    model = (pz.select(model).at_instances_of(model_parts.TransformerBlock).pick_nth_selected(0)
             .insert_before(site_layer("embed", "embedding")))
  return model


def penzai_transformer(config: llamalike_common.LlamalikeTransformerConfig
                       | gpt_neox.GPTNeoXTransformerConfig, *,
                       kinds: Sequence[str] = TRANSFORMER_SITE_KINDS, embed: bool = True,
                       name: str | None = None) -> Model:
  """A penzai transformer built from ``config`` and instrumented, as a `Model`.

  ``apply(params, tokens (B, T) int, sites) -> logits (B, T, V)``; sites as in
  `instrument_transformer`; params as penzai labels them (``transformer/block_0/...``).
  """
  if isinstance(config, llamalike_common.LlamalikeTransformerConfig):
    build_transformer = llamalike_common.build_llamalike_transformer
  elif isinstance(config, gpt_neox.GPTNeoXTransformerConfig):
    build_transformer = gpt_neox.build_gpt_neox_transformer
  else:
    raise BadInputError(f"penzai_transformer: unsupported config {type(config).__name__}")

  def build(key: jax.Array | None) -> model_parts.TransformerLM:
    return instrument_transformer(build_transformer(config, init_base_rng=key), kinds=kinds,
                                  embed=embed)

  return from_penzai(
      build, wrap_inputs=lambda tokens: pz.nx.wrap(jnp.asarray(tokens)).tag("batch", "seq"),
      unwrap_outputs=lambda logits: logits.unwrap("batch", "seq", "vocabulary"),
      name=name or f"penzai_{type(config).__name__}")


def _dense_layers(path: str, key: jax.Array | None, in_axis: str, out_axis: str, width_in: int,
                  width_out: int) -> list[pz.nn.Layer]:
  """Linear then AddBias with params ``{path}/kernel`` (width_in, width_out) and ``{path}/bias``."""
  kernel_init = jax.nn.initializers.lecun_normal()
  kernel = pz.nn.make_parameter(
      f"{path}/kernel", key,
      lambda k: pz.nx.wrap(kernel_init(k, (width_in, width_out), jnp.float32)).tag(in_axis, out_axis))
  bias = pz.nn.make_parameter(
      f"{path}/bias", key, lambda k: pz.nx.wrap(jnp.zeros((width_out,), jnp.float32)).tag(out_axis))
  return [pz.nn.Linear(weights=kernel, in_axis_names=(in_axis,), out_axis_names=(out_axis,)),
          pz.nn.AddBias(bias=bias, new_axis_names=())]


def penzai_mlp(in_features: int, hidden_sizes: Sequence[int], num_classes: int, *,
               activation: Callable[[jax.Array], jax.Array] = jax.nn.relu) -> Model:
  """The penzai twin of `landscape.models.mlp`: same params layout, sites and site links.

  Params are {"hidden": {"0": {"kernel" (in, h0), "bias" (h0,)}, ...}, "output": {...}}, so the
  params of one model run the other. Inputs (B, ...) are flattened to (B, in_features); outputs are
  logits (B, num_classes); site ``hidden_{i}`` (B, hidden_sizes[i]) follows layer i's activation.
  The initialisation (lecun normal kernels, zero biases) is drawn differently from NNX's.
  """
  hidden_sizes = tuple(hidden_sizes)
  site_names = tuple(f"hidden_{i}" for i in range(len(hidden_sizes)))
  axes = ("inputs",) + site_names + ("classes",)
  widths = (in_features,) + hidden_sizes + (num_classes,)

  def build(key: jax.Array | None) -> pz.nn.Sequential:
    layers = []
    for i, site in enumerate(site_names):
      layer_key = None if key is None else jax.random.fold_in(key, i)
      layers += _dense_layers(f"hidden/{i}", layer_key, axes[i], axes[i + 1], widths[i], widths[i + 1])
      layers += [pz.nn.Elementwise(activation), site_layer(site, site, leading_axes=("batch",))]
    output_key = None if key is None else jax.random.fold_in(key, len(site_names))
    layers += _dense_layers("output", output_key, axes[-2], axes[-1], widths[-2], widths[-1])
    return pz.nn.Sequential(layers)

  layer_paths = [("hidden", str(i)) for i in range(len(hidden_sizes))] + [("output",)]
  return from_penzai(
      build,
      wrap_inputs=lambda x: pz.nx.wrap(jnp.reshape(x, (x.shape[0], -1))).tag("batch", "inputs"),
      unwrap_outputs=lambda logits: logits.unwrap("batch", "classes"),
      site_links=_dense_site_links(layer_paths, site_names), name="penzai_mlp")
