"""Keeps the reports of orbax's abandoned background work off the terminal once a run has said what failed.

Orbax reads and writes checkpoints with asyncio event loops in its own threads and
with tensorstore's. When a read or a write fails, orbax raises one error in the
thread that waits for it (the trainer turns it into one line: "checkpoint N is
damaged ...", "cannot write checkpoint N ..."), but the other reads and writes of
the same operation go on and end later, any time up to the interpreter's
shutdown, each with a report of its own:

- orbax's ERROR log lines (absl) with a traceback per failed thread;
- asyncio's "Task exception was never retrieved" log lines for its tasks, and
  "Future exception was never retrieved" for the futures that await tensorstore's
  reads: their error is tensorstore's status (``DATA_LOSS: ...``), made in C++ and
  never raised in Python, so it carries no traceback to tell where it came from;
- "Exception ignored in: <coroutine ...>" and "Event loop is closed" reports
  (`sys.unraisablehook`) when a coroutine is collected or a result arrives after
  its loop was closed, some of them while Python shuts down;
- "coroutine ... was never awaited" warnings for the parts of a failed save that
  never started.

None of them changes what happened: every error that matters reaches the
waiting thread. A run (`session`) therefore holds these reports back, and only
these: those whose code is orbax's or tensorstore's (or the "Event loop is
closed" of a loop that orbax closed). If the run ends without a reported
failure, it prints them at its end, unchanged. Once a failure is reported
(`failure_reported`), they are dropped, from then until the process ends.
Everything else passes through at once.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import types
import warnings
from typing import Any

_HOLD, _DROP, _PASS = "hold", "drop", "pass"

# The status codes that tensorstore's errors begin with ("DATA_LOSS: Error reading ...").
_STATUS = re.compile(r"(CANCELLED|UNKNOWN|INVALID_ARGUMENT|DEADLINE_EXCEEDED|NOT_FOUND|ALREADY_EXISTS|"
                     r"PERMISSION_DENIED|RESOURCE_EXHAUSTED|FAILED_PRECONDITION|ABORTED|OUT_OF_RANGE|"
                     r"UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS|UNAUTHENTICATED): ")


def _is_tensorstore_status(error: Any) -> bool:
  """An error tensorstore made from a C++ status and handed to an asyncio future: never raised in Python."""
  return (isinstance(error, BaseException) and error.__traceback__ is None
          and _STATUS.match(str(error)) is not None)


def _package_dirs() -> tuple[str, ...]:
  dirs = []
  for name in ("orbax.checkpoint", "tensorstore"):
    try:
      module = __import__(name, fromlist=["_"])
    except ImportError:
      continue
    path = os.path.dirname(os.path.abspath(module.__file__))
    if name == "orbax.checkpoint":
      path = os.path.dirname(path)  # The whole orbax package.
    dirs.append(path + os.sep)
  return tuple(dirs)


class _Filter(logging.Filter):
  """The logging side: orbax's ERROR lines (absl) and asyncio's lines about orbax's tasks."""

  def __init__(self, state: "_State"):
    super().__init__()
    self._state = state

  def filter(self, record: logging.LogRecord) -> bool:
    state = self._state
    if state.mode == _PASS or state.releasing or record.levelno < logging.ERROR:
      return True
    if not state.is_orbax_record(record):
      return True
    if state.mode == _HOLD:
      with state.lock:
        state.held.append(("log", record))
    return False


class _State:
  """The process's one filter: installed once, switched between holding, dropping and passing."""

  def __init__(self):
    self.mode = _PASS
    self.releasing = False
    self.held: list[tuple[str, Any]] = []
    self.lock = threading.Lock()
    self.dirs = _package_dirs()
    self._previous_hook = None
    self._loggers = ("absl", "asyncio")
    self._filter = _Filter(self)
    for name in self._loggers:
      logging.getLogger(name).addFilter(self._filter)
    self._install_hook()
    self._install_warnings()

  def _install_warnings(self) -> None:
    # warnings._showwarnmsg receives the warning with its source (the coroutine); showwarning does not.
    previous = getattr(warnings, "_showwarnmsg", None)
    if previous is None:
      return
    self._previous_showwarnmsg = previous
    state = self

    def show(message: Any, state=state, previous=previous, passing=_PASS, holding=_HOLD,
             coroutine=types.CoroutineType) -> None:
      try:
        source = getattr(message, "source", None)
        if (state.mode != passing and not state.releasing and isinstance(source, coroutine)
            and state._from_dirs(source.cr_code.co_filename)):  # pylint: disable=protected-access
          if state.mode == holding:
            state.held.append(("warning", message))
          return
      except Exception:  # pylint: disable=broad-except
        pass
      previous(message)

    show.octflax_quiet = True
    warnings._showwarnmsg = show  # pylint: disable=protected-access

  def reinstall(self) -> None:
    """Puts the filter back where another hook replaced it (e.g. a test runner's, per test)."""
    if not getattr(sys.unraisablehook, "octflax_quiet", False):
      self._install_hook()
    if not getattr(getattr(warnings, "_showwarnmsg", None), "octflax_quiet", True):
      self._install_warnings()

  def _install_hook(self) -> None:
    previous = sys.unraisablehook
    self._previous_hook = previous
    state = self

    # Runs also while the interpreter shuts down (module globals may be gone by then): it
    # reads only what it was given here.
    def hook(report: Any, state=state, previous=previous, coroutine=types.CoroutineType,
             closed_loop=RuntimeError, passing=_PASS, holding=_HOLD) -> None:
      try:
        mode = state.mode
        if mode != passing and not state.releasing and state.is_orbax_report(report, coroutine, closed_loop):
          if mode == holding:
            state.held.append(("unraisable", report))
          return
      except Exception:  # pylint: disable=broad-except
        pass
      previous(report)

    hook.octflax_quiet = True
    sys.unraisablehook = hook

  def _from_dirs(self, filename: str | None) -> bool:
    return bool(filename) and filename.startswith(self.dirs)

  def _traceback_in_dirs(self, tb: Any) -> bool:
    while tb is not None:
      if self._from_dirs(tb.tb_frame.f_code.co_filename):
        return True
      tb = tb.tb_next
    return False

  def is_orbax_report(self, report: Any, coroutine: type = types.CoroutineType,
                      closed_loop: type = RuntimeError) -> bool:
    exc = report.exc_value
    if isinstance(exc, closed_loop) and str(exc) == "Event loop is closed":
      return True
    obj = report.object
    code = getattr(obj, "cr_code", None) if isinstance(obj, coroutine) else getattr(obj, "__code__", None)
    if code is not None and self._from_dirs(code.co_filename):
      return True
    return self._traceback_in_dirs(report.exc_traceback)

  def is_orbax_record(self, record: logging.LogRecord) -> bool:
    if record.name == "asyncio":
      if record.exc_info and (self._traceback_in_dirs(record.exc_info[2])
                              or _is_tensorstore_status(record.exc_info[1])):
        return True
      try:
        message = record.getMessage()
      except Exception:  # pylint: disable=broad-except
        return False
      return any(d in message for d in self.dirs)
    return self._from_dirs(record.pathname)

  def release(self) -> None:
    """Prints what was held, through the handlers it was meant for."""
    with self.lock:
      held, self.held = self.held, []
    self.releasing = True
    try:
      for kind, item in held:
        if kind == "log":
          logging.getLogger(item.name).handle(item)
        elif kind == "warning":
          self._previous_showwarnmsg(item)
        else:
          self._previous_hook(item)
    finally:
      self.releasing = False


_STATE: _State | None = None
_INSTALL = threading.Lock()


def _state() -> _State:
  global _STATE
  with _INSTALL:
    if _STATE is None:
      _STATE = _State()
  return _STATE


class session:  # pylint: disable=invalid-name
  """A run: orbax's background reports are held until it ends (see the module docstring).

  Typical use::

    with quiet.session():
      train(...)          # a failure it reports calls quiet.failure_reported()
  """

  def __enter__(self) -> session:
    state = _state()
    state.reinstall()
    self._was = state.mode
    if state.mode != _DROP:
      state.mode = _HOLD
    return self

  def __exit__(self, *exc) -> bool:
    state = _state()
    if state.mode == _HOLD:
      state.mode = self._was
      state.release()
    return False


def failure_reported() -> None:
  """A failure of orbax's work was reported in one line: its leftovers are dropped from now on."""
  state = _state()
  state.reinstall()
  state.mode = _DROP
  with state.lock:
    state.held.clear()


__all__ = ["failure_reported", "session"]
