"""What every experiment binary shares: flags, logging, and errors a person can read.

A binary is three lines around one library call::

    _CONFIG = cli.define_flags("configs/train.py")
    def main(argv): cli.run(landscape.supervised.run, argv)
    if __name__ == "__main__": cli.main(main)

A library call that takes a ``command`` keyword gets the command line that started the binary (to
write into its report), so the library never reads ``sys.argv`` itself.
"""

from __future__ import annotations

import inspect
import logging as python_logging
import os
import re
import shlex
import sys
from collections.abc import Callable
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from landscape import training
from landscape.sites import BadInputError
from landscape.training import NonFiniteLossError
from landscape.training import Preempted

COMPILATION_CACHE_VARIABLE = "LANDSCAPE_COMPILATION_CACHE"
DEFAULT_COMPILATION_CACHE = os.path.join("~", ".cache", "landscape", "jax_compilation_cache")

EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3
EXIT_PREEMPTED = 143  # 128 + SIGTERM, what a scheduler expects from a preempted job

_CONFIG = None
_WORKDIR = None
_COMMAND = None  # the command line parse_flags saw, for run_fn's `command`


def define_flags(default_config: str) -> None:
  """--config (an ml_collections config file, locked) and --workdir."""
  global _CONFIG, _WORKDIR
  _CONFIG = config_flags.DEFINE_config_file(
      "config", default_config, "Python config file, optionally with :PRESET; override fields with "
      "--config.FIELD=VALUE.", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and reports go. "
                                 "Running the same command again resumes from here.", required=True)


def _unknown_field_message(argv: list[str], error: Exception) -> str:
  """Names the --config.FIELD=VALUE argument whose field does not exist (ml_collections only says the key)."""
  named = re.search(r'instead of "(\w+)"', str(error))
  words = {named.group(1)} if named else set(re.findall(r"\w+", str(error)))
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=")[0].split(".")
    unknown = [key for key in path if key in words]
    if unknown:
      hint = re.search(r'Did you mean "([^"]+)"', str(error))
      return (f"error: {arg}: the config has no field {unknown[-1]!r}"
              + (f" (did you mean {hint.group(1)!r}?)" if hint else ""))
  return f"error: unknown config field: {error}"


def command_line(argv: Sequence[str], module: str | None = None) -> str:
  """The shell command that runs ``argv`` again, arguments quoted where the shell needs it.

  ``python -m MODULE ARG...`` for a module run with -m, ``python ARGV0 ARG...`` for a script.
  """
  program = ["python", "-m", module] if module else ["python", argv[0]]
  return shlex.join([*program, *argv[1:]])


def _main_module() -> str | None:
  """The module `python -m` ran, or None for a script."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  return spec.name if spec is not None else None


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with an unknown or mistyped --config field reported by name and value."""
  global _COMMAND
  _COMMAND = command_line(argv, _main_module())
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:
    sys.exit(_unknown_field_message(argv, error))
  except flags.Error as error:
    sys.exit(f"error: {error}")


def quiet_library_logs() -> None:
  """Keeps orbax's per-save INFO lines out of the console (warnings still show)."""

  class DropOrbaxInfo(python_logging.Filter):

    def filter(self, record):
      return record.levelno >= python_logging.WARNING or "orbax" not in record.pathname

  for handler in python_logging.getLogger().handlers + [logging.get_absl_handler()]:
    handler.addFilter(DropOrbaxInfo())


def use_compilation_cache(directory: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache; returns its directory (None when disabled).

  Compiled programs are kept on disk keyed by the program itself, so a rerun (a resumed run, the
  same experiment again) skips compiling, and two programs that are the same within one run
  (two arms that differ only in their data) compile once. The directory is ``directory``, else
  $LANDSCAPE_COMPILATION_CACHE, else ~/.cache/landscape/jax_compilation_cache; an empty
  $LANDSCAPE_COMPILATION_CACHE turns the cache off.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if directory is None:
    directory = os.environ.get(COMPILATION_CACHE_VARIABLE, DEFAULT_COMPILATION_CACHE)
  if not directory:
    return None
  directory = os.path.expanduser(directory)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory


def run(run_fn: Callable[..., object], argv: list[str]) -> None:
  """Calls ``run_fn(config, workdir)`` and turns the library's errors into exit codes and messages.

  When ``run_fn`` takes a ``command`` keyword, it also gets the binary's command line (as
  `parse_flags` saw it; not passed when the flags were parsed some other way).
  """
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  quiet_library_logs()
  training.keep_freed_memory()
  cache = use_compilation_cache()
  logging.info("compilation cache: %s", cache or "off")
  config, workdir = _CONFIG.value, os.path.expanduser(_WORKDIR.value)
  logging.info("config:\n%s", config)
  takes_command = "command" in inspect.signature(run_fn).parameters
  extra = {"command": _COMMAND} if takes_command and _COMMAND is not None else {}
  try:
    run_fn(config, workdir, **extra)
  except BadInputError as error:
    # Exactly the library's bad-input checks; anything else is a bug and keeps its traceback.
    logging.error("%s: %s", type(error).__name__, error)
    sys.exit(EXIT_BAD_INPUT)
  except NonFiniteLossError as error:
    logging.error("%s", error)
    sys.exit(EXIT_NON_FINITE)
  except Preempted as error:
    logging.warning("%s", error)
    sys.exit(EXIT_PREEMPTED)


def main(main_fn: Callable[[list[str]], None]) -> None:
  app.run(main_fn, flags_parser=parse_flags)
