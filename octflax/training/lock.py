"""One run per working directory: a lock file that names its holder.

A run takes ``WORKDIR/run.lock`` before it writes anything and holds it until it
ends (normally, with an error, or stopped by SIGTERM / Ctrl-C). The file holds
an exclusive `fcntl.flock` for the holder's lifetime, and its text names the
holder: host, process id and start time (JSON). A second run on the same
directory finds the lock held and stops with one line naming the holder
(`WorkdirLockedError`, exit status 73), having written nothing.

A run killed outright (SIGKILL, a power cut) leaves the file behind; the kernel
drops its flock with the process. The next run on the same host then finds the
file free, checks that the process it names is gone, says so in one line and
takes the lock over. A file left by a process on another host is not taken over
(this host cannot see that process): the run stops and names it; delete the file
once that run is gone.

Local paths only; a ``gs://`` (or any ``scheme://``) working directory is not
locked.
"""

from __future__ import annotations

import datetime
import errno as errno_lib
import fcntl
import json
import os
import socket
import sys
from typing import Any, Callable

from octflax.errors import WorkdirError, WorkdirLockedError

LOCK_FILE = "run.lock"


def _say(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def _process_start(pid: int) -> str | None:
  """The start time of process ``pid`` in clock ticks since boot (Linux), which tells a process
  from a later one that got the same id; None where /proc does not say."""
  try:
    with open(f"/proc/{pid}/stat", "rb") as f:
      return f.read().rsplit(b")", 1)[1].split()[19].decode()
  except (OSError, IndexError):
    return None


def process_exists(pid: int, start: str | None = None) -> bool:
  """Whether process ``pid`` runs on this host (and, given ``start``, is the one started then)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # It exists, as another user's process.
  if start is not None:
    now = _process_start(pid)
    return now is None or now == start
  return True


def describe_holder(holder: dict[str, Any]) -> str:
  """``'pid 4242 on host worker-3, started 2026-12-03 07:10:05 UTC'``."""
  if not holder.get("pid"):
    return "a run that is starting (its lock file names no process yet)"
  return f"pid {holder.get('pid')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"


class WorkdirLock:
  """The lock of one working directory (see the module docstring).

  Typical use::

    lock = WorkdirLock('/runs/a').acquire()   # or WorkdirLockedError
    try:
      ...
    finally:
      lock.release()
  """

  def __init__(self, workdir: str, say: Callable[[str], None] = _say):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._say = say
    self._fd: int | None = None
    self.took_over: dict[str, Any] | None = None  # The holder whose leftover lock this run took over.

  def _read(self, fd: int) -> dict[str, Any]:
    try:
      text = os.pread(fd, 1 << 16, 0).decode("utf-8", "replace")
      holder = json.loads(text) if text.strip() else {}
      return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
      return {}

  def _open(self) -> int:
    try:
      return os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as e:
      if e.errno in (errno_lib.ENOSPC, errno_lib.EDQUOT):
        raise  # A full disk: the caller says so (see octflax.training.rundir).
      raise WorkdirError(f"--workdir {self.workdir}: cannot create its lock file {LOCK_FILE}: "
                         f"{e.strerror or e}.") from None

  def _refuse(self, holder: dict[str, Any], why: str = "") -> WorkdirLockedError:
    return WorkdirLockedError(
        f"{self.workdir} is in use by another run: {describe_holder(holder)}{why} (lock file {self.path}). "
        "This run wrote nothing; wait for that run to end or stop it, or use another --workdir.")

  def acquire(self) -> WorkdirLock:
    """Takes the lock, or raises.

    Raises:
      WorkdirLockedError: a live process holds it, or a process of another host left it.
      WorkdirError: the lock file cannot be created.
    """
    for _ in range(10):
      fd = self._open()
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        flocked = True
      except BlockingIOError:
        holder = self._read(fd)
        os.close(fd)
        raise self._refuse(holder) from None
      except OSError as e:
        if e.errno not in (errno_lib.ENOLCK, errno_lib.EOPNOTSUPP, errno_lib.EINVAL):
          os.close(fd)
          raise
        flocked = False  # A file system without flock: the holder's process id decides alone.
      try:
        same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same_file = False
      if not same_file:  # The holder removed the file between our open and our flock: try again.
        os.close(fd)
        continue
      holder = self._read(fd)
      if holder:
        if holder.get("host") != socket.gethostname():
          os.close(fd)
          raise self._refuse(holder, "; this host cannot tell whether that process still runs, so its "
                                     f"lock is kept: delete {self.path} once it is gone")
        if not flocked and holder.get("pid") and process_exists(int(holder["pid"]), holder.get("process_start")):
          os.close(fd)
          raise self._refuse(holder)
        self.took_over = holder
      self._fd = fd
      self._write()
      if self.took_over is not None:
        self._say(f"{self.path} was left by {describe_holder(self.took_over)}, which no longer runs; "
                  "this run takes the lock over.")
      return self
    raise WorkdirLockedError(f"{self.workdir}: could not take its lock file {self.path} (it keeps being replaced).")

  def _write(self) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": now.strftime("%Y-%m-%d %H:%M:%S UTC"),
              "process_start": _process_start(os.getpid()), "command": " ".join(sys.argv)}
    data = (json.dumps(holder, indent=1) + "\n").encode()
    try:
      os.ftruncate(self._fd, 0)
      os.pwrite(self._fd, data, 0)
    except OSError:
      self.release()
      raise

  @property
  def held(self) -> bool:
    return self._fd is not None

  def release(self) -> None:
    """Removes the lock file and drops the lock (nothing if not held)."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
        os.unlink(self.path)
    except OSError:
      pass  # E.g. a folder that became read-only: the next run takes the file over.
    finally:
      os.close(fd)

  def __enter__(self) -> WorkdirLock:
    return self.acquire() if self._fd is None else self

  def __exit__(self, *exc) -> bool:
    self.release()
    return False


__all__ = ["LOCK_FILE", "WorkdirLock", "describe_holder", "process_exists"]
