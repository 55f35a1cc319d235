"""Named sites: the points of a forward pass where activations are read and changed.

A model calls ``sites(name, act)`` at each of its sites and carries on with the value returned. The
`Sites` object for one forward pass holds the interventions to apply there (site name -> function of
the activation) and the names whose activations to record. Interventions are values passed in, so the
same model runs with or without them, and training and evaluation can pass different ones.

This floor imports nothing else from landscape: models, directions, interventions and transforms all
speak its vocabulary.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from landscape.sites._errors import BadInputError

Intervention = Callable[[jax.Array], jax.Array]

ALL_SITES = "all"

# Captured activations read before a site's interventions are filed under ``name + BEFORE_SUFFIX``.
BEFORE_SUFFIX = "@before"


def before_interventions(name: str) -> str:
  """The key under which a capture of site ``name`` before its interventions is returned.

  ``Model.forward(..., capture_before=["hidden_0"])`` returns the activation that reached site
  ``hidden_0``, before the interventions there, as ``acts[before_interventions("hidden_0")]``
  (``"hidden_0@before"``); ``acts["hidden_0"]`` is always the value after them.
  """
  return name + BEFORE_SUFFIX


class ParamLink(NamedTuple):
  """How one parameter leaf touches a site's space.

  path: the key path of the leaf in the params pytree (a nested dict of arrays).
  axis: the axis of the (unstacked) leaf whose coordinates live in the site's space.
  role: "writes" when the leaf's output lands in the site (its output side), "reads" when the leaf
    reads the site (its input side).
  index: for parameters stacked over layers (scan), the position on the leading axis; None otherwise.
  """

  path: tuple[str, ...]
  axis: int
  role: str
  index: int | None = None


class UnknownSiteError(BadInputError):
  """A site name that the model does not have."""


class SiteShapeError(BadInputError):
  """An intervention whose width does not match the activation at its site."""


def check_intervention(name: str, intervention: Any) -> None:
  """Raises BadInputError unless ``intervention`` is callable as ``act -> act`` (one argument).

  Signatures that `inspect.signature` cannot read (some builtins) pass unchecked.
  """
  if not callable(intervention):
    raise BadInputError(f"intervention at site {name!r} is a {type(intervention).__name__} "
                        f"({intervention!r}), not a function act -> act")
  try:
    signature = inspect.signature(intervention)
  except (TypeError, ValueError):
    return
  try:
    signature.bind(None)
  except TypeError as error:
    raise BadInputError(
        f"intervention {_describe(intervention)} at site {name!r} has signature {signature}; an "
        f"intervention takes one activation and returns one, act -> act ({error})") from None


def _describe(fn: Any) -> str:
  return getattr(fn, "__qualname__", None) or type(fn).__name__


def apply_intervention(name: str, intervention: Intervention, act: jax.Array) -> jax.Array:
  """``intervention(act)``, after checking its signature (``act -> act``) and its ``width`` (when
  it has one) against the site's."""
  check_intervention(name, intervention)
  width = getattr(intervention, "width", None)
  if width is not None and act.shape[-1] != width:
    raise SiteShapeError(f"intervention {type(intervention).__name__} at site {name!r} has width "
                         f"{width}, but the site's activation has shape {act.shape}")
  return intervention(act)


def check_site_names(names: Iterable[str], known: Iterable[str], *, what: str) -> None:
  """Raises UnknownSiteError naming every requested site the model lacks, and the ones it has."""
  known = tuple(known)
  unknown = sorted(set(names) - set(known))
  if unknown:
    raise UnknownSiteError(
        f"{what}: unknown site(s) {unknown}; the model has {len(known)} sites: "
        f"{_abbreviate(known)}")


def _abbreviate(names: tuple[str, ...], limit: int = 24) -> str:
  if len(names) <= limit:
    return ", ".join(names)
  return ", ".join(names[:limit]) + f", ... ({len(names) - limit} more)"


class _Selection:
  """A set of site names, or every site (ALL_SITES)."""

  def __init__(self, names: Iterable[str] | str):
    self.everything = names == ALL_SITES
    self.names = frozenset() if self.everything else frozenset(names)

  def __contains__(self, name: str) -> bool:
    return self.everything or name in self.names


class Sites:
  """What one forward pass does at its named sites.

  Interventions run first; the value after them is what is captured (by default) and what the rest
  of the model sees. A site named in ``capture_before`` is also recorded as it arrived, before its
  interventions, under ``before_interventions(name)`` (``name + "@before"``): a loss term can read a
  latent before the intervention that routes it. A `Sites` is built inside the traced function for
  one forward pass and is not a pytree; its interventions may close over traced arrays.

  Attributes:
    interventions: site name -> function of the activation.
    capture: the site names to record after their interventions (empty when ALL_SITES).
    capture_before: the site names to record before their interventions (empty when ALL_SITES).
    captured: site name (after) or ``before_interventions(name)`` (before) -> activation, filled in
      during the forward pass.
    visited: the site names in the order the model reached them.
  """

  def __init__(self,
               interventions: Mapping[str, Intervention] | None = None,
               capture: Iterable[str] | str = (),
               capture_before: Iterable[str] | str = ()):
    self.interventions = dict(interventions or {})
    for name, intervention in self.interventions.items():
      check_intervention(name, intervention)
    self._after = _Selection(capture)
    self._before = _Selection(capture_before)
    self.capture = self._after.names
    self.capture_before = self._before.names
    self.captured: dict[str, jax.Array] = {}
    self.visited: list[str] = []

  def wants(self, name: str) -> bool:
    """Whether site ``name`` is recorded after its interventions."""
    return name in self._after

  def wants_before(self, name: str) -> bool:
    """Whether site ``name`` is recorded before its interventions."""
    return name in self._before

  def __call__(self, name: str, act: jax.Array) -> jax.Array:
    self.visited.append(name)
    if self.wants_before(name):
      self.captured[before_interventions(name)] = act
    intervention = self.interventions.get(name)
    if intervention is not None:
      act = apply_intervention(name, intervention, act)
    if self.wants(name):
      self.captured[name] = act
    return act

  def scoped(self, prefix: str) -> "ScopedSites":
    """A view that prefixes every name with ``prefix + '.'`` (a layer's sites)."""
    return ScopedSites(self, prefix)

  def scanned(self, prefix: str, num_layers: int) -> "ScannedSites":
    """A view for the body of a scan over ``num_layers`` layers named ``prefix.{i}.*``."""
    return ScannedSites(self, prefix, num_layers)

  def check_visited(self, *, model: str = "model") -> None:
    """Raises if an intervention or capture names a site this forward pass never reached."""
    reached = set(self.visited)
    requested = set(self.interventions) | set(self.capture) | set(self.capture_before)
    check_site_names(requested, sorted(reached), what=f"{model} forward pass")


class ScopedSites:
  """Sites of one layer: ``view(kind, act)`` is ``parent(f'{prefix}.{kind}', act)``."""

  def __init__(self, parent: Sites | "ScopedSites", prefix: str):
    self._parent = parent
    self._prefix = prefix

  def __call__(self, kind: str, act: jax.Array) -> jax.Array:
    return self._parent(f"{self._prefix}.{kind}", act)

  def scoped(self, prefix: str) -> "ScopedSites":
    return ScopedSites(self, prefix)


class ScannedSites:
  """Sites inside a `jax.lax.scan` over layers, where the layer index is traced.

  Usage in a scanned model::

      scanned = sites.scanned("blocks", num_layers)
      def body(x, layer):
        params, index = layer
        view = scanned.at(index)
        x = block(params, x, view)        # calls view("resid_post", x) and so on
        return x, view.outputs()
      x, captured = jax.lax.scan(body, x, (stacked_params, jnp.arange(num_layers)))
      scanned.finish(captured)

  An intervention at ``blocks.{i}.{kind}`` is applied where the traced index equals i (a select, so
  the other layers pass their activation through unchanged). A capture of any layer's ``kind`` stacks
  that kind over layers as a scan output; `finish` files the requested layers under their names
  (captures before interventions under ``before_interventions(name)``, as `Sites` does).
  """

  def __init__(self, parent: Sites, prefix: str, num_layers: int):
    self._parent = parent
    self._prefix = prefix
    self._num_layers = num_layers

  def _name(self, layer: int, kind: str) -> str:
    return f"{self._prefix}.{layer}.{kind}"

  def at(self, index: jax.Array) -> "_ScannedLayerView":
    return _ScannedLayerView(self, index)

  def finish(self, stacked: Mapping[str, Any]) -> None:
    """Files the scan's stacked outputs (``view.outputs()`` of every layer) under their names."""
    for kind, (acts_before_L, acts_L) in stacked.items():
      for layer in range(self._num_layers):
        name = self._name(layer, kind)
        self._parent.visited.append(name)
        if self._parent.wants_before(name):
          self._parent.captured[before_interventions(name)] = acts_before_L[layer]
        if self._parent.wants(name):
          self._parent.captured[name] = acts_L[layer]

  def _wanted(self, kind: str, wants: Callable[[str], bool]) -> bool:
    return any(wants(self._name(layer, kind)) for layer in range(self._num_layers))


class _ScannedLayerView:

  def __init__(self, scanned: ScannedSites, index: jax.Array):
    self._scanned = scanned
    self._index = index
    self._outputs: dict[str, jax.Array] = {}

  def __call__(self, kind: str, act: jax.Array) -> jax.Array:
    scanned = self._scanned
    parent = scanned._parent
    arrived = act
    for layer in range(scanned._num_layers):
      name = scanned._name(layer, kind)
      intervention = parent.interventions.get(name)
      if intervention is not None:
        act = jnp.where(self._index == layer, apply_intervention(name, intervention, act), act)
    # Every kind is reported so `finish` can mark it visited; only requested kinds are kept.
    unwanted = jnp.zeros((0,), act.dtype)
    self._outputs[kind] = (arrived if scanned._wanted(kind, parent.wants_before) else unwanted,
                           act if scanned._wanted(kind, parent.wants) else unwanted)
    return act

  def scoped(self, prefix: str) -> ScopedSites:
    return ScopedSites(self, prefix)

  def outputs(self) -> dict[str, Any]:
    return dict(self._outputs)
