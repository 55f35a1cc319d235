"""DESIGN.md's floors: a module imports only from its own floor or lower ones."""

import ast
import os

from absl.testing import absltest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "landscape")
# Lowest first. The experiments (block_vs_reshape, supervised, benchmark, cli, inspect) sit on top.
FLOORS = ["sites", "data", "models", "directions", "interventions", "transforms", "sae", "objectives",
          "training", "analysis"]
FORBIDDEN = {"transforms": {"models", "training"}, "sae": {"data", "models", "training"}}


def _floor(module: str) -> str | None:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 and parts[0] == "landscape" and parts[1] in FLOORS else None


def _imports(path: str) -> set[str]:
  with open(path) as handle:
    tree = ast.parse(handle.read())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      found.add(node.module)
      found.update(f"{node.module}.{alias.name}" for alias in node.names)
  return found


class LayeringTest(absltest.TestCase):

  def test_no_floor_imports_an_upper_floor(self):
    violations = []
    for floor in FLOORS:
      for directory, _, files in os.walk(os.path.join(ROOT, floor)):
        for name in files:
          if not name.endswith(".py"):
            continue
          path = os.path.join(directory, name)
          for module in _imports(path):
            target = _floor(module)
            if module.startswith(("experiments", "configs")) or (
                target and (FLOORS.index(target) > FLOORS.index(floor) or
                            target in FORBIDDEN.get(floor, ()))):
              violations.append(f"{os.path.relpath(path, ROOT)} imports {module}")
    self.assertEmpty(violations)

  def test_the_check_sees_imports(self):
    self.assertIn("landscape.sites", _imports(os.path.join(ROOT, "transforms", "_directions.py")))


if __name__ == "__main__":
  absltest.main()
