"""The errors of octflax's runs and checkpoints, each with a message that says what to do."""

from __future__ import annotations

EXIT_WORKDIR_LOCKED = 73  # sysexits' EX_CANTCREAT: another run holds the working directory; nothing written.
EXIT_WRITE_FAILED = 74  # sysexits' EX_IOERR: a file could not be written (full disk, quota, read-only).


class TrainingError(Exception):
  """Base class of the errors a training run stops with."""


class ConfigError(TrainingError, ValueError):
  """A config field that does not exist, or a value that cannot work (e.g. a batch size
  that does not split over the devices). The message names the field and the fix."""


class CheckpointMismatchError(TrainingError, ValueError):
  """The working directory holds a checkpoint of another model or data set."""


class DivergenceError(TrainingError, FloatingPointError):
  """The loss or the parameters became NaN or infinite.

  Attributes:
    step: the first step whose loss, gradient or resulting parameters were not finite.
    last_good_step: the step of the last checkpoint kept (None if there is none).
  """

  def __init__(self, message: str, step: int, last_good_step: int | None):
    super().__init__(message)
    self.step = step
    self.last_good_step = last_good_step


class WorkdirError(TrainingError, OSError):
  """The working directory is a file, cannot be created, or cannot be written."""


class CheckpointError(TrainingError):
  """The run's checkpoints exist but none of them can be restored (nothing was changed)."""


class RunStopped(TrainingError):
  """The run was stopped by a signal (SIGTERM, SIGINT) after checkpointing the step it was on.

  Not a failure: the same command resumes from ``step``.

  Attributes:
    step: the step of the checkpoint written on the way out.
    signal_name: ``'SIGTERM'`` or ``'SIGINT'``.
  """

  def __init__(self, message: str, step: int, signal_name: str):
    super().__init__(message)
    self.step = step
    self.signal_name = signal_name


class WriteFailedError(TrainingError, OSError):
  """A file of the run could not be written: no space left, a quota or a file-size limit
  reached, or a folder that became read-only (``experiments.train`` exits with status 74,
  `EXIT_WRITE_FAILED`).

  Everything saved before is intact; the message names what was being written,
  the newest intact checkpoint and what to do. The same command resumes once the
  cause is gone.

  Attributes:
    errno: the operating system's error number (ENOSPC, EDQUOT, EFBIG, EROFS, EACCES, EPERM).
    intact_step: the step of the newest intact checkpoint (None if there is none).
  """

  def __init__(self, message: str, errno: int, intact_step: int | None):
    super().__init__(message)
    self.errno = errno
    self.intact_step = intact_step

  def __str__(self) -> str:
    return self.args[0]


class WorkdirLockedError(TrainingError):
  """Another run holds the working directory's lock (``experiments.train`` exits with status 73,
  `EXIT_WORKDIR_LOCKED`); this run wrote nothing. The message names the holder."""
