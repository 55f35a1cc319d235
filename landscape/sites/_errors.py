"""The one base class of the library's bad-input errors.

Every check of what a caller passed in (a config field, a basis, a site name, a file, a loss term's
inputs) raises a subclass of `BadInputError` whose message names the field and the value. The
experiment binaries map exactly this class to their bad-input exit status and message; any other
exception is a bug and surfaces with its traceback.
"""


class BadInputError(ValueError):
  """Input that landscape cannot use; the message names the field and the value."""
