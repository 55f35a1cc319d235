"""Checkpoints with orbax's CheckpointManager: asynchronous saves, only complete ones restored."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def path_name(path: tuple[Any, ...]) -> str:
  """A key path as orbax's checkpoint metadata spells it: dict keys, NamedTuple and dataclass
  fields, and sequence indices, joined by "/"."""
  names = []
  for key in path:
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        names.append(str(getattr(key, attribute)))
        break
    else:
      names.append(str(key))
  return "/".join(names)


class Checkpoints:
  """The run's checkpoints under ``directory``.

  Saves are asynchronous: `save` returns once the arrays are copied off the accelerator, and a
  checkpoint becomes visible to `latest_step` only when it is completely written, so a run killed
  mid-save resumes from the previous one. ``create=False`` only reads what is there (another run's
  checkpoints, for a warm start); ``max_to_keep=None`` keeps every checkpoint.
  """

  def __init__(self, directory: str, *, max_to_keep: int | None, async_save: bool = True,
               create: bool = True):
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           enable_async_checkpointing=async_save, create=create)
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, step: int, target: Any) -> Any:
    """Restores into the structure, shapes and shardings of ``target`` (arrays or ShapeDtypeStructs)."""
    abstract = jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None)),
        target)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def saved_arrays(self, step: int) -> dict[str, tuple[tuple[int, ...], Any]] | None:
    """path -> (shape, dtype) of every array saved at ``step`` (read from its metadata, no arrays).

    Paths as `path_name` spells them. None
    when the checkpoint has no readable metadata.
    """
    metadata = self._manager.item_metadata(step)
    tree = getattr(metadata, "tree", metadata)
    if tree is None:
      return None
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {path_name(path): (tuple(leaf.shape), leaf.dtype)
            for path, leaf in leaves}

  def restore_as_saved(self, step: int) -> Any:
    """The tree saved at ``step`` as nested dicts and lists of arrays on this process's first device.

    For reading another run's checkpoint whose train state this process cannot rebuild.
    """
    metadata = self._manager.item_metadata(step)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
        getattr(metadata, "tree", metadata))
    return self._manager.restore(step, args=ocp.args.StandardRestore(target))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
