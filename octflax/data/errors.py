"""Errors raised by the data readers and the input pipeline."""

from __future__ import annotations

from octflax.errors import OctflaxError


class DataError(OctflaxError, ValueError):
  """Bad input data or a bad argument to a data reader or loader.

  The message names the file or argument, says what was wrong and what is
  expected or allowed.
  """


class MissingDataError(DataError, FileNotFoundError):
  """A data directory or file does not exist.

  The message names the missing path and says how to get the data.
  """
