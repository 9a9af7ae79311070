"""The errors of octflax, each with a message that says what to do, and the exit status of each.

Every error octflax raises on purpose is an `OctflaxError`. A training run stops
with a `TrainingError`; a checkpoint that cannot be read or does not fit
(`CheckpointError`, `CheckpointMismatchError`) is not one, as inference meets it
too, and neither is `octflax.data.DataError` (missing or malformed data).

The commands (``experiments.train``, ``experiments.evaluate``,
``experiments.convert_torch``) print such an error as one line and exit with its
`exit_status`:

- 1 (`EXIT_FAILED`): missing data, an unusable working directory or checkpoint, a
  diverged run, any other error.
- 2 (`EXIT_USAGE`): a bad command line or config value (`ConfigError`); nothing ran.
- 73 (`EXIT_WORKDIR_LOCKED`, sysexits' EX_CANTCREAT): another run holds the working
  directory (`WorkdirLockedError`); nothing written.
- 74 (`EXIT_WRITE_FAILED`, EX_IOERR): a file could not be written: no space left, a
  quota or file-size limit, a read-only folder (`WriteFailedError`); what was saved
  before is intact and the same command resumes.
- 75 (`EXIT_STOPPED`, EX_TEMPFAIL): stopped by SIGTERM or a first Ctrl-C after
  checkpointing the step in flight (`RunStopped`); the same command resumes.
- 130 (`EXIT_INTERRUPTED`): a second Ctrl-C (`KeyboardInterrupt`), stopped at once;
  the shell's status of SIGINT.
"""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WORKDIR_LOCKED = 73
EXIT_WRITE_FAILED = 74
EXIT_STOPPED = 75
EXIT_INTERRUPTED = 130


class OctflaxError(Exception):
  """Base class of the errors octflax raises on purpose (the message says what to do)."""


class TrainingError(OctflaxError):
  """Base class of the errors a training run stops with."""


class ConfigError(TrainingError, ValueError):
  """A config field that does not exist, or a value that cannot work (e.g. a batch size
  that does not split over the devices). The message names the field and the fix."""


class CheckpointError(OctflaxError):
  """Checkpoints that exist but cannot be restored (nothing was changed), or no checkpoint where one
  was named."""


class CheckpointMismatchError(OctflaxError, ValueError):
  """A checkpoint of another model or data set than the one asked for (a run's working directory,
  ``init_from``, or `octflax.checkpoint.load_model`)."""


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


class RunStopped(TrainingError):
  """The run was stopped by a signal (SIGTERM, SIGINT) after checkpointing the step it was on.

  Not a failure: the same command resumes from ``step`` (exit status `EXIT_STOPPED`).

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
  reached, or a folder that became read-only (exit status `EXIT_WRITE_FAILED`).

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
  """Another run holds the working directory's lock (exit status `EXIT_WORKDIR_LOCKED`); this run
  wrote nothing. The message names the holder."""


# The first class an error is an instance of gives its status; any other error is EXIT_FAILED.
_EXIT_STATUSES = (
    (ConfigError, EXIT_USAGE),
    (RunStopped, EXIT_STOPPED),
    (WorkdirLockedError, EXIT_WORKDIR_LOCKED),
    (WriteFailedError, EXIT_WRITE_FAILED),
    (KeyboardInterrupt, EXIT_INTERRUPTED),
)


def exit_status(error: BaseException) -> int:
  """The exit status of a command that stops with ``error`` (see the table above).

  >>> exit_status(ConfigError("config.batch_size must be an integer >= 1; got 0."))
  2
  >>> exit_status(RunStopped("stopped by SIGTERM", step=5, signal_name="SIGTERM"))
  75
  >>> exit_status(CheckpointError("no checkpoint")), exit_status(KeyboardInterrupt())
  (1, 130)
  """
  for kind, status in _EXIT_STATUSES:
    if isinstance(error, kind):
      return status
  return EXIT_FAILED


__all__ = [
    "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_STOPPED", "EXIT_USAGE", "EXIT_WORKDIR_LOCKED", "EXIT_WRITE_FAILED",
    "CheckpointError", "CheckpointMismatchError", "ConfigError", "DivergenceError", "OctflaxError", "RunStopped",
    "TrainingError", "WorkdirError", "WorkdirLockedError", "WriteFailedError", "exit_status",
]
