"""SAEs on disk in SAELens's layout: a directory with ``sae_weights.safetensors`` and ``cfg.json``.

The weights file holds ``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in), ``b_enc`` (d_sae,),
``b_dec`` (d_in,) and, for JumpReLU, ``threshold`` (d_sae,). ``cfg.json`` holds at least
``architecture`` ("standard", "topk", "jumprelu"), ``d_in``, ``d_sae``, ``dtype`` and the hook
name, plus ``k`` for TopK. `save_saelens` writes the fields of SAELens 6's inference config, with
the hook name (and any metadata) both at the top level and in ``metadata``, so SAELens's loader
reads what landscape writes (see `save_saelens`); `load_saelens` reads SAELens's files: its
releases, Gemma Scope in its layout, older configs (``hook_point``, ``activation_fn_kwargs.k``),
and its training checkpoints (``log_threshold``, a BatchTopK's ``topk_threshold``,
``rescale_acts_by_decoder_norm`` folded in on loading).

A BatchTopK SAE is saved as what it is at inference, a JumpReLU with one threshold repeated per
latent, as SAELens saves one; a ``landscape`` entry of ``cfg.json`` (ignored by SAELens) records its
k, so it loads back into landscape as a `BatchTopKSAE`. A JumpReLU's bandwidth is recorded there
too. Only the NumPy API of ``safetensors`` is used (no PyTorch).
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file
from safetensors.numpy import save_file

from landscape.sae._architectures import SAE
from landscape.sae._architectures import BatchTopKSAE
from landscape.sae._architectures import JumpReLUSAE
from landscape.sae._architectures import StandardSAE
from landscape.sae._architectures import TopKSAE
from landscape.sites import BadInputError

WEIGHTS_FILENAME = "sae_weights.safetensors"
CONFIG_FILENAME = "cfg.json"
# The architectures of SAELens's inference configs that landscape reads, and "batchtopk" (a SAELens
# training checkpoint).
SAELENS_ARCHITECTURES = ("standard", "topk", "jumprelu", "batchtopk")


class SAEFileError(BadInputError):
  """An SAE file that cannot be used: missing, malformed, inconsistent with its cfg.json, of an
  unknown architecture, or of the wrong width for its site."""


class LoadedSAE(NamedTuple):
  """What `load_saelens` read.

  sae: the SAE.
  hook_name: the site it was trained at, as the file names it (None if it names none).
  config: cfg.json as read.
  """

  sae: SAE
  hook_name: str | None
  config: dict[str, Any]


def check_sae_width(sae: SAE, width: int | tuple[int, ...], *, site: str | None = None) -> None:
  """Raises `SAEFileError` unless ``sae`` reads activations of ``width`` (an int, or the site's
  activation shape, whose last axis is its width), naming both shapes."""
  shape = tuple(width) if isinstance(width, (tuple, list)) else (int(width),)
  if shape[-1] != sae.d_in:
    where = f"site {site!r}" if site is not None else "the site"
    raise SAEFileError(f"SAE with W_enc of shape {tuple(sae.W_enc.shape)} (d_in={sae.d_in}) does "
                       f"not fit {where}, whose activation has shape {shape} (width {shape[-1]})")


def _host(array: Any, dtype: Any = None) -> np.ndarray:
  host = np.asarray(array)
  return np.ascontiguousarray(host if dtype is None else host.astype(dtype))


def save_saelens(sae: SAE, directory: str | os.PathLike, *, hook_name: str,
                 metadata: dict[str, Any] | None = None) -> tuple[str, str]:
  """Writes ``sae`` to ``directory`` in SAELens's layout; returns (weights path, cfg path).

  Arrays keep their dtype (``cfg.json``'s ``dtype`` is W_enc's). Save the SAE that acts on the
  site's raw activations (fold any input normalisation in first: `fold_normalization`), so
  ``normalize_activations`` is "none".

  cfg.json holds, at the top level, the fields of SAELens 6's ``SAEConfig`` (``d_in``, ``d_sae``,
  ``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``,
  ``reshape_activations``, ``architecture``; ``k`` and ``rescale_acts_by_decoder_norm`` for TopK),
  and ``hook_name`` and the ``metadata`` entries (e.g. ``model_name``) both at the top level and
  in ``metadata``. It names no ``sae_lens_version``, so SAELens's loader
  (``handle_config_defaulting``) reads it as it reads files of SAELens before 6: it keeps the
  config fields and moves ``hook_name``, ``model_name`` and its other metadata keys from the top
  level into ``metadata``.

  Raises:
    SAEFileError: a stack of SAEs, or a metadata entry named like a config field.
  """
  if sae.stack_shape:
    raise SAEFileError(f"save_saelens: a stack of {sae.stack_shape} SAEs; save each of "
                       f"unstack_saes(stacked)")
  metadata = dict(metadata or {})
  dtype = np.asarray(sae.W_enc).dtype
  arrays = {"W_enc": _host(sae.W_enc), "W_dec": _host(sae.W_dec), "b_enc": _host(sae.b_enc),
            "b_dec": _host(sae.b_dec)}
  landscape: dict[str, Any] = {"architecture": sae.architecture}
  if isinstance(sae, BatchTopKSAE):
    architecture = "jumprelu"
    arrays["threshold"] = np.full((sae.d_sae,), np.asarray(sae.threshold), dtype)
    landscape["k"] = sae.k
  elif isinstance(sae, JumpReLUSAE):
    architecture = "jumprelu"
    arrays["threshold"] = _host(sae.threshold)
    landscape["bandwidth"] = sae.bandwidth
  else:
    architecture = sae.architecture
  config: dict[str, Any] = {
      "architecture": architecture, "d_in": sae.d_in, "d_sae": sae.d_sae,
      "dtype": np.dtype(dtype).name, "device": "cpu",
      "apply_b_dec_to_input": sae.apply_b_dec_to_input, "normalize_activations": "none",
      "reshape_activations": "none", "landscape": landscape}
  if isinstance(sae, TopKSAE):
    config.update(k=sae.k, rescale_acts_by_decoder_norm=False)
  clashes = sorted(set(metadata) & (set(config) | {"metadata"}))
  if clashes:
    raise SAEFileError(f"save_saelens: metadata entries {clashes} are cfg.json fields; name them "
                       "otherwise")
  metadata["hook_name"] = hook_name
  config.update(metadata)
  config["metadata"] = metadata
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  weights_path = os.path.join(directory, WEIGHTS_FILENAME)
  config_path = os.path.join(directory, CONFIG_FILENAME)
  save_file(arrays, weights_path + ".tmp")
  os.replace(weights_path + ".tmp", weights_path)
  with open(config_path + ".tmp", "w") as handle:
    json.dump(config, handle, indent=2)
  os.replace(config_path + ".tmp", config_path)
  return weights_path, config_path


def _read_config(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, CONFIG_FILENAME)
  try:
    with open(path) as handle:
      config = json.load(handle)
  except FileNotFoundError:
    raise SAEFileError(f"load_saelens: no {CONFIG_FILENAME} in {directory!r}") from None
  except json.JSONDecodeError as error:
    raise SAEFileError(f"load_saelens: {path} is not JSON ({error})") from None
  if not isinstance(config, dict):
    raise SAEFileError(f"load_saelens: {path} holds a {type(config).__name__}, not an object")
  return config


def _architecture(config: dict[str, Any], where: str) -> str:
  architecture = config.get("architecture", "standard")
  if architecture == "standard" and config.get("activation_fn") == "topk":
    architecture = "topk"  # SAELens before 6 wrote TopK SAEs this way
  if architecture not in SAELENS_ARCHITECTURES:
    raise SAEFileError(f"{where}: unknown architecture {architecture!r}; landscape reads "
                       f"{list(SAELENS_ARCHITECTURES)}")
  landscape = config.get("landscape") or {}
  if architecture == "jumprelu" and landscape.get("architecture") == "batchtopk":
    return "batchtopk"
  return architecture


def _int_field(config: dict[str, Any], name: str, where: str, value: Any = None) -> int:
  value = config.get(name) if value is None else value
  if isinstance(value, float) and value.is_integer():
    value = int(value)
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise SAEFileError(f"{where}: {name}={value!r}; expected a positive int")
  return value


def _k(config: dict[str, Any], where: str) -> int:
  landscape = config.get("landscape") or {}
  value = config.get("k", landscape.get("k"))
  if value is None:
    value = (config.get("activation_fn_kwargs") or {}).get("k")
  return _int_field(config, "k", where, value)


def _check_unsupported(config: dict[str, Any], where: str) -> None:
  normalize = config.get("normalize_activations", "none")
  if normalize not in ("none", None, False):
    raise SAEFileError(f"{where}: normalize_activations={normalize!r}; landscape reads only SAEs "
                       f"on raw activations ('none': fold the scaling factor into the weights)")
  reshape = config.get("reshape_activations", "none")
  if reshape not in ("none", None):
    raise SAEFileError(f"{where}: reshape_activations={reshape!r}; landscape reads only SAEs of a "
                       f"flat site ('none')")


def _expected_shapes(architecture: str, d_in: int, d_sae: int) -> dict[str, tuple[int, ...]]:
  shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
  if architecture in ("jumprelu", "batchtopk"):
    shapes["threshold"] = (d_sae,)
  return shapes


def _normalise_keys(arrays: dict[str, np.ndarray], d_sae: int, where: str
                    ) -> dict[str, np.ndarray]:
  """SAELens training checkpoints' variants turned into the inference layout."""
  arrays = dict(arrays)
  if "log_threshold" in arrays and "threshold" not in arrays:
    arrays["threshold"] = np.exp(arrays.pop("log_threshold"))
  if "topk_threshold" in arrays and "threshold" not in arrays:
    value = arrays.pop("topk_threshold")
    if value.size != 1:
      raise SAEFileError(f"{where}: topk_threshold has shape {value.shape}; expected a scalar")
    arrays["threshold"] = np.full((d_sae,), value.reshape(()),
                                  arrays.get("W_enc", value).dtype)
  if "scaling_factor" in arrays:
    scaling = arrays.pop("scaling_factor")
    if not np.all(scaling == 1):
      raise SAEFileError(f"{where}: a finetuning scaling_factor of shape {scaling.shape} that is "
                         f"not all ones; landscape does not apply one")
  return arrays


def load_saelens(directory: str | os.PathLike, *, width: int | tuple[int, ...] | None = None,
                 site: str | None = None) -> LoadedSAE:
  """Reads an SAE in SAELens's layout from ``directory`` (see the module docstring).

  Args:
    directory: holds sae_weights.safetensors and cfg.json.
    width: when given, the width of the site it will be attached to (or that site's activation
      shape), checked by `check_sae_width`.
    site: names the site in that check's message (the file's hook name by default).

  Raises:
    SAEFileError: a missing or malformed file; an architecture landscape does not read (named);
      arrays missing, extra, or of shapes other than cfg.json's d_in and d_sae imply (both shapes
      named); input normalisation or reshaping that landscape does not apply; a width mismatch.
  """
  directory = os.fspath(directory)
  config = _read_config(directory)
  weights_path = os.path.join(directory, WEIGHTS_FILENAME)
  where = f"load_saelens({directory!r})"
  architecture = _architecture(config, where)
  _check_unsupported(config, where)
  d_in = _int_field(config, "d_in", where)
  d_sae = _int_field(config, "d_sae", where)
  if not os.path.exists(weights_path):
    raise SAEFileError(f"{where}: no {WEIGHTS_FILENAME}")
  try:
    arrays = load_file(weights_path)
  except Exception as error:  # safetensors raises its own error types for corrupt files
    raise SAEFileError(f"{where}: cannot read {WEIGHTS_FILENAME} ({error})") from None
  arrays = _normalise_keys(arrays, d_sae, where)
  expected = _expected_shapes(architecture, d_in, d_sae)
  missing = sorted(set(expected) - set(arrays))
  extra = sorted(set(arrays) - set(expected))
  if missing or extra:
    raise SAEFileError(f"{where}: {WEIGHTS_FILENAME} holds {sorted(arrays)}; a {architecture!r} "
                       f"SAE needs {sorted(expected)} (missing {missing}, unexpected {extra})")
  for name, shape in expected.items():
    if arrays[name].shape != shape:
      raise SAEFileError(f"{where}: {name} has shape {arrays[name].shape}, but cfg.json's d_in="
                         f"{d_in}, d_sae={d_sae} make it {shape}")
  for name, array in arrays.items():
    if not np.all(np.isfinite(array.astype(np.float32))):
      raise SAEFileError(f"{where}: {name} of shape {array.shape} has non-finite entries")
  if config.get("rescale_acts_by_decoder_norm"):
    # SAELens then encodes with pre * ||W_dec_i|| and decodes codes / ||W_dec_i||; folding those
    # norms into W_enc, b_enc and W_dec gives the same function with the codes SAELens reports.
    norms = np.linalg.norm(arrays["W_dec"].astype(np.float32), axis=-1)
    arrays["W_enc"] = (arrays["W_enc"] * norms[None, :]).astype(arrays["W_enc"].dtype)
    arrays["b_enc"] = (arrays["b_enc"] * norms).astype(arrays["b_enc"].dtype)
    arrays["W_dec"] = (arrays["W_dec"] / norms[:, None]).astype(arrays["W_dec"].dtype)
  fields = {name: jnp.asarray(arrays[name]) for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
  fields["apply_b_dec_to_input"] = bool(config.get("apply_b_dec_to_input", True))
  landscape = config.get("landscape") or {}
  if architecture == "topk":
    sae = TopKSAE(k=_k(config, where), **fields)
  elif architecture == "batchtopk":
    threshold = arrays["threshold"]
    if not np.all(threshold == threshold.reshape(-1)[0]):
      raise SAEFileError(f"{where}: a BatchTopK SAE's threshold must be one value repeated; got "
                         f"values in [{threshold.min()}, {threshold.max()}]")
    sae = BatchTopKSAE(k=_k(config, where), threshold=jnp.asarray(threshold[0], jnp.float32),
                       **fields)
  elif architecture == "jumprelu":
    extra_fields = {"bandwidth": float(landscape["bandwidth"])} if "bandwidth" in landscape else {}
    sae = JumpReLUSAE(threshold=jnp.asarray(arrays["threshold"]), **extra_fields, **fields)
  else:
    sae = StandardSAE(**fields)
  hook_name = ((config.get("metadata") or {}).get("hook_name") or config.get("hook_name")
               or config.get("hook_point"))
  if width is not None:
    check_sae_width(sae, width, site=site if site is not None else hook_name)
  return LoadedSAE(sae=sae, hook_name=hook_name, config=config)
