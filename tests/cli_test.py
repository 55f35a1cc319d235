"""The binaries' error contract: exactly the library's bad-input errors become exit status 2."""

import tempfile
import types
from unittest import mock

from absl.testing import absltest

import landscape
from landscape import cli
from landscape import training
from landscape import transforms


class BadInputMappingTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    workdir = self.enter_context(tempfile.TemporaryDirectory())
    self.enter_context(mock.patch.object(cli, "_CONFIG", types.SimpleNamespace(value={})))
    self.enter_context(mock.patch.object(cli, "_WORKDIR", types.SimpleNamespace(value=workdir)))

  def _run_raising(self, error):
    def run_fn(config, workdir):
      del config, workdir
      raise error
    cli.run(run_fn, ["binary"])

  def test_every_library_error_class_is_bad_input(self):
    for error_class in (training.ConfigError, landscape.directions.BasisError,
                        transforms.DirectionsError, landscape.sites.UnknownSiteError,
                        landscape.sites.SiteShapeError):
      self.assertTrue(issubclass(error_class, landscape.BadInputError), error_class)

  def test_bad_input_exits_with_status_2_and_its_message(self):
    with self.assertLogs(level="ERROR") as logs, self.assertRaises(SystemExit) as exited:
      self._run_raising(training.ConfigError("config.steps=-1: must be > 0"))
    self.assertEqual(exited.exception.code, cli.EXIT_BAD_INPUT)
    self.assertIn("config.steps=-1: must be > 0", "\n".join(logs.output))

  def test_any_other_error_surfaces_as_a_bug(self):
    for error in (ValueError("an internal shape mistake"), KeyError("missing"), TypeError("bug")):
      with self.assertRaises(type(error)):
        self._run_raising(error)


if __name__ == "__main__":
  absltest.main()
