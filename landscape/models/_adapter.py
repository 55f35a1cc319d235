"""A model as pure functions of (params, inputs, sites), whatever library built it.

The training loop, the directions, interventions and objectives see a model only through `Model`:
``init(key) -> params`` and ``apply(params, inputs, sites) -> outputs``, with params a nested dict of
arrays, and the names of its sites. `from_nnx` wraps a flax NNX module; a researcher's own model is
anything that can be put in this shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
from flax import nnx

from landscape.sites import ALL_SITES
from landscape.sites import ParamLink
from landscape.sites import Sites
from landscape.sites import check_site_names
from landscape.sites import BadInputError

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Model:
  """A model as pure functions.

  Attributes:
    init: key -> params, a nested dict of arrays with string keys.
    apply: (params, inputs, sites) -> outputs. ``sites`` is a `Sites`; the model calls it at every
      site in `site_names`, in that order.
    site_names: every site, in forward order.
    site_links: site -> the parameters that write into or read from it (see `ParamLink`). Sites
      missing here touch no parameter directly.
    name: for messages.
  """

  init: Callable[[jax.Array], Params]
  apply: Callable[[Params, Any, Sites], Any]
  site_names: tuple[str, ...]
  site_links: Mapping[str, tuple[ParamLink, ...]] = dataclasses.field(default_factory=dict)
  name: str = "model"

  def forward(self, params: Params, inputs: Any, *,
              interventions: Mapping[str, Callable[[jax.Array], jax.Array]] | None = None,
              capture: Iterable[str] | str = (),
              capture_before: Iterable[str] | str = ()) -> tuple[Any, dict[str, jax.Array]]:
    """Runs the model with interventions at sites and returns (outputs, captured activations).

    ``capture`` names the sites read after their interventions (what the rest of the model sees),
    under their own names. ``capture_before`` names sites read as they arrived, before their
    interventions, under ``landscape.sites.before_interventions(name)`` (``name + "@before"``).
    Either may be "all". Site names and interventions' signatures are checked before anything is
    traced.
    """
    interventions = dict(interventions or {})
    self.check_sites(interventions, what=f"{self.name}: interventions")
    if capture != ALL_SITES:
      capture = tuple(capture)
      self.check_sites(capture, what=f"{self.name}: capture")
    if capture_before != ALL_SITES:
      capture_before = tuple(capture_before)
      self.check_sites(capture_before, what=f"{self.name}: capture_before")
    sites = Sites(interventions, capture, capture_before)
    outputs = self.apply(params, inputs, sites)
    return outputs, sites.captured

  def check_sites(self, names: Iterable[str], *, what: str) -> None:
    check_site_names(names, self.site_names, what=what)

  def site_shapes(self, params: Params, example_inputs: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """The shape and dtype of the activation at every site for these inputs (no computation)."""
    _, captured = jax.eval_shape(lambda p, x: self.forward(p, x, capture="all"), params,
                                 example_inputs)
    return dict(captured)

  def site_widths(self, params: Params, example_inputs: Any) -> dict[str, int]:
    """The width D (last axis) of every site."""
    return {name: shape.shape[-1] for name, shape in self.site_shapes(params, example_inputs).items()}


def from_nnx(make_module: Callable[[nnx.Rngs], nnx.Module], *, name: str | None = None) -> Model:
  """Wraps a flax NNX module whose ``__call__(inputs, sites)`` calls ``sites`` at its sites.

  The module must define ``site_names()`` and may define ``site_links()``. Its state must be
  `nnx.Param` variables only (no batch statistics or RNG streams): everything else a step needs comes
  in through its arguments.
  """
  abstract = nnx.eval_shape(lambda: make_module(nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  non_params = nnx.state(abstract, nnx.Not(nnx.Param))
  if jax.tree_util.tree_leaves(non_params):
    raise BadInputError(
        f"from_nnx: {type(abstract).__name__} holds non-Param state "
        f"{list(nnx.to_flat_state(non_params).keys())[:5]}; only nnx.Param variables are supported")
  template = nnx.to_pure_dict(abstract_state)

  def init(key: jax.Array) -> Params:
    module = make_module(nnx.Rngs(key))
    return _stringify_keys(nnx.to_pure_dict(nnx.state(module, nnx.Param)))

  def apply(params: Params, inputs: Any, sites: Sites | None = None) -> Any:
    state = jax.tree_util.tree_map(lambda leaf: leaf, abstract_state)
    nnx.replace_by_pure_dict(state, _restore_keys(params, template))
    module = nnx.merge(graphdef, state)
    return module(inputs, sites if sites is not None else Sites())

  links = abstract.site_links() if hasattr(abstract, "site_links") else {}
  return Model(init=init, apply=apply, site_names=tuple(abstract.site_names()),
               site_links=links, name=name or type(abstract).__name__)


def _stringify_keys(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {str(key): _stringify_keys(value) for key, value in tree.items()}
  return tree


def _restore_keys(tree: Any, template: Any) -> Any:
  """Gives ``tree`` (string keys) the key types of ``template`` (NNX lists use int keys)."""
  if isinstance(template, Mapping):
    return {key: _restore_keys(tree[str(key)], value) for key, value in template.items()}
  return tree
