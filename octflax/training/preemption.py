"""Stopping a run on a pre-emption notice (SIGTERM) or a Ctrl-C (SIGINT) without losing steps.

On the first SIGTERM or SIGINT the trainer finishes the step in flight, writes a
checkpoint at that step, flushes its metrics and stops with `RunStopped`
(``experiments.train`` exits with status 75, `EXIT_STOPPED`); the same command
resumes. A second SIGINT ends the process at once (the shell's status 130), losing
the steps since the last checkpoint.

Multi-process runs must stop at the same step on every process, since saving is
collective. There JAX's preemption sync service (started by
`jax.distributed.initialize`) receives the SIGTERM itself and
`jax.experimental.multihost_utils.reached_preemption_sync_point` tells every
process the same step to stop at; a SIGINT is passed on to it as a SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax

EXIT_STOPPED = 75  # sysexits' EX_TEMPFAIL: stopped on request after a checkpoint; run the command again.
EXIT_INTERRUPTED = 130  # A second Ctrl-C: stopped at once, the usual shell status of SIGINT.


def _sync_manager() -> Any:
  """JAX's preemption sync manager of a multi-process run, or None."""
  if jax.process_count() == 1:
    return None
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return getattr(distributed.global_state, "preemption_sync_manager", None)


class StopSignals:
  """A context in which SIGTERM and SIGINT ask the run to stop after the current step.

  Typical use::

    with StopSignals() as stop:
      for step in ...:
        state = train_step(state, batch)
        if stop.requested(step):
          save(step); raise RunStopped(...)
  """

  def __init__(self):
    self.signal_name: str | None = None
    self._previous: dict[int, Any] = {}
    self._sync = None

  def __enter__(self) -> StopSignals:
    self._sync = _sync_manager()
    if threading.current_thread() is not threading.main_thread():
      return self  # Signals reach only the main thread's handlers; nothing to install.
    signals = [signal.SIGINT]
    if self._sync is None:
      signals.append(signal.SIGTERM)  # Else JAX's service owns SIGTERM.
    for sig in signals:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> bool:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
    return False

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    if self.signal_name is None:
      self.signal_name = signal.Signals(signum).name
    # A second Ctrl-C ends the process at once, also while it waits in XLA (where a Python
    # handler would run only when the call returns).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if self._sync is not None and signum == signal.SIGINT:
      os.kill(os.getpid(), signal.SIGTERM)  # Through JAX's service, so all processes agree.

  def requested(self, step: int) -> bool:
    """Whether to checkpoint ``step`` (just dispatched) and stop; call after every step.

    Multi-process: True on every process at the same step.
    """
    if self._sync is not None:
      if self._sync.reached_sync_point(int(step)):
        self.signal_name = self.signal_name or "SIGTERM"
        return True
      return False
    return self.signal_name is not None


__all__ = ["EXIT_INTERRUPTED", "EXIT_STOPPED", "StopSignals"]
