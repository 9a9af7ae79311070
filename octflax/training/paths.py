"""The run's working directory: resolved (`octflax.files.resolve_path`), created and checked writable."""

from __future__ import annotations

import os

from octflax.errors import WorkdirError
from octflax.files import is_url, resolve_path

PROBE_FILE = ".octflax-write-probe"


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


__all__ = ["PROBE_FILE", "prepare_workdir"]
