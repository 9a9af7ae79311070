"""Paths a user gives (working directory, data, checkpoints): relative, absolute, ``~`` or a URL.

Every path that reaches the trainer, `experiments.evaluate` or
`experiments.convert_torch` goes through `resolve_path` once, where it enters:
orbax refuses relative paths, and a path resolved later (after a ``chdir`` or in
a background thread) would name another place.
"""

from __future__ import annotations

import os
import re

from octflax.training.errors import WorkdirError

# ``gs://bucket``, ``s3://...``, ``https://...``: anything with a scheme is passed through.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

PROBE_FILE = ".octflax-write-probe"


def is_url(path: str | os.PathLike) -> bool:
  """True for ``scheme://...`` paths (``gs://``, ``s3://``, ``https://``)."""
  return bool(_URL.match(os.fspath(path)))


def resolve_path(path: str | os.PathLike) -> str:
  """The absolute form of a local path (``~`` expanded); URLs unchanged.

  ``resolve_path(p) = abspath(expanduser(p))`` for a local ``p``; a ``scheme://``
  path is returned as given.

  Args:
    path: a path as the user wrote it.

  Returns:
    The path as a string.

  Examples:
    >>> resolve_path('gs://bucket/run')
    'gs://bucket/run'
    >>> resolve_path('~/run') == os.path.join(os.path.expanduser('~'), 'run')
    True
    >>> os.path.isabs(resolve_path('runs/a'))
    True
  """
  path = os.fspath(path)
  if is_url(path):
    return path
  return os.path.abspath(os.path.expanduser(path))


def prepare_workdir(workdir: str | os.PathLike) -> str:
  """Resolves ``workdir``, creates it and checks that files can be written in it.

  Call before anything compiles, so that an unusable directory costs nothing.
  A local directory gets a probe file written and removed; a URL is only
  resolved (its store is checked by the first write).

  Args:
    workdir: the run's working directory as the user gave it.

  Returns:
    The resolved path (see `resolve_path`).

  Raises:
    WorkdirError: the path is a file, cannot be created or is not writable.
  """
  path = resolve_path(workdir)
  if is_url(path):
    return path
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"--workdir {os.fspath(workdir)!r} ({path}) is a file, not a directory; "
                       "give a directory (it is created if missing).")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"--workdir {os.fspath(workdir)!r}: cannot create {path}: "
                       f"{e.strerror or e}.") from None
  probe = os.path.join(path, f"{PROBE_FILE}-{os.getpid()}")
  try:
    with open(probe, "w") as f:
      f.write("probe\n")
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f"--workdir {os.fspath(workdir)!r}: cannot write in {path}: "
                       f"{e.strerror or e}.") from None
  return path


__all__ = ["PROBE_FILE", "is_url", "prepare_workdir", "resolve_path"]
