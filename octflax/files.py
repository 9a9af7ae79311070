"""Paths as users give them, and writes that fail: out of space, over a quota or a file-size limit, read-only.

Every path that reaches the trainer, `experiments.evaluate` or
`experiments.convert_torch` goes through `resolve_path` once, where it enters:
orbax refuses relative paths, and a path resolved later (after a ``chdir`` or in
a background thread) would name another place.

A run writes checkpoints (orbax, from background threads), ``metrics.jsonl``,
``summary.json``, ``curves.png`` and its lock file. When one of these writes fails
because the disk or the quota is full, a file-size limit is reached, or the
folder became read-only, the run stops with one `WriteFailedError` line (exit
status 74) that names what was being written and where, the newest intact
checkpoint, and what to do; everything saved before stays as it was, and the same
command resumes once the cause is gone.

`cannot_write` tells such a failure from others: an `OSError` with one of these
error numbers, or orbax's and tensorstore's errors, which carry the number in
their text (``[os_error_code='28']``). `replace_file` writes a whole file so that
a failed or killed write leaves the previous version in place.
"""

from __future__ import annotations

import errno as errno_lib
import os
import re
from typing import Iterator

from octflax.errors import WriteFailedError

# What a write that cannot succeed (until someone acts) fails with.
CANNOT_WRITE = (errno_lib.ENOSPC, errno_lib.EDQUOT, errno_lib.EFBIG, errno_lib.EROFS, errno_lib.EACCES,
                errno_lib.EPERM)
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_TEXTS = {os.strerror(code): code for code in CANNOT_WRITE}
_TMP_STEP = re.compile(r"/(\d+)\.orbax-checkpoint-tmp")
# ``gs://bucket``, ``s3://...``, ``https://...``: anything with a scheme is passed through.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


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


def chain(error: BaseException) -> Iterator[BaseException]:
  """``error``, its cause or context, theirs, and so on."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def cannot_write(error: BaseException) -> int | None:
  """The error number when ``error`` (or its cause) is a write that cannot succeed, else None.

  Examples:
    >>> cannot_write(OSError(28, 'No space left on device'))
    28
    >>> cannot_write(ValueError("RESOURCE_EXHAUSTED: ...: No space left on device [os_error_code='28']"))
    28
    >>> cannot_write(FileNotFoundError(2, 'No such file or directory')) is None
    True
  """
  for e in chain(error):
    if isinstance(e, WriteFailedError):
      return e.errno
    if isinstance(e, OSError) and e.errno in CANNOT_WRITE:
      return e.errno
    if isinstance(e, OSError) and e.errno is not None:
      continue  # Another OSError (a missing file, ...): not a write that cannot succeed.
    text = str(e)
    match = _OS_ERROR_CODE.search(text)
    if match and int(match.group(1)) in CANNOT_WRITE:
      return int(match.group(1))
    for message, code in _TEXTS.items():
      if message in text:
        return code
  return None


def replace_file(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes ``data`` to ``path`` through a temporary file renamed over it (local paths).

  A write that fails (no space, ...) or is killed leaves the previous file as it
  was; the error names ``path``. A ``scheme://`` path is written directly.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top

  path = os.fspath(path)
  if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path):
    target = epath.Path(path)
    target.write_bytes(data) if isinstance(data, bytes) else target.write_text(data)
    return
  tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
  try:
    with open(tmp, "wb") as f:
      f.write(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)
  except OSError as e:
    try:
      os.remove(tmp)
    except OSError:
      pass
    raise OSError(e.errno, e.strerror, path) from None


def overwrite_file(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` over ``path`` in place (no second copy's space needed); an error names ``path``."""
  from etils import epath  # pylint: disable=g-import-not-at-top

  try:
    epath.Path(path).write_bytes(data)
  except OSError as e:
    raise OSError(e.errno, e.strerror, os.fspath(path)) from None


def failed_checkpoint_step(error: BaseException) -> int | None:
  """The step whose unfinished ``STEP.orbax-checkpoint-tmp`` folder orbax's error names, if any."""
  for e in chain(error):
    match = _TMP_STEP.search(str(e))
    if match:
      return int(match.group(1))
  return None


def describe(code: int) -> str:
  """``'No space left on device (ENOSPC)'``."""
  return f"{os.strerror(code)} ({errno_lib.errorcode.get(code, code)})"


def intact_checkpoints(checkpoint_dir: str) -> list[int]:
  """Steps of the finished checkpoints in ``checkpoint_dir`` (orbax renames a folder to its step
  when the save is complete), newest first; local directories only (a URL gives [])."""
  try:
    names = os.listdir(checkpoint_dir)
  except OSError:
    return []
  return sorted((int(n) for n in names if n.isdigit()), reverse=True)


def write_failed(what: str, folder: str, code: int, checkpoint_dir: str, *, exclude: int | None = None,
                 removed: bool = False) -> WriteFailedError:
  """The one-line error of a write that failed with error number ``code``.

  Args:
    what: what was being written ('checkpoint 400', 'metrics.jsonl', ...).
    folder: where.
    code: the error number (see `cannot_write`).
    checkpoint_dir: the run's checkpoint folder (its newest intact checkpoint is named).
    exclude: a step not to count as intact (the one that failed).
    removed: the failed save's unfinished folder was removed.
  """
  steps = [s for s in intact_checkpoints(checkpoint_dir) if s != exclude]
  intact = steps[0] if steps else None
  message = f"cannot write {what} in {folder}: {describe(code)}"
  if removed:
    message += "; its unfinished folder was removed"
  if intact is None:
    message += ". No checkpoint had been saved yet"
    resume = "it starts again from step 0"
  else:
    message += (f". The newest intact checkpoint is step {intact} ({os.path.join(checkpoint_dir, str(intact))}); "
                "nothing saved before was lost")
    resume = f"it resumes from step {intact}"
  if code in (errno_lib.ENOSPC, errno_lib.EDQUOT):
    todo = "Free space there (or raise the quota)"
  elif code == errno_lib.EFBIG:
    todo = "Raise the file-size limit (ulimit -f)"
  else:
    todo = f"Make {folder} writable again"
  return WriteFailedError(f"{message}. {todo} and run the same command: {resume}.", code, intact)


__all__ = ["CANNOT_WRITE", "cannot_write", "chain", "describe", "failed_checkpoint_step", "intact_checkpoints", "is_url",
           "overwrite_file", "replace_file", "resolve_path", "write_failed"]
