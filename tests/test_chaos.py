"""Kill-anywhere: a short run SIGKILLed at random moments, restarted after each kill, ends as if never killed.

The run is the tiny Oct-ResNet of test_training_cli (4 epochs of 8 steps, a
checkpoint every 5 steps, an evaluation per epoch) with a progress line per
step. Each kill waits for a moment of the run chosen at random: a step, a
checkpoint save (just after its step), an epoch's evaluation (just after the
epoch's last step), the final summary (after the last evaluation), or the start
(imports, restoring, compiling); then a random delay; then SIGKILL. After at least
10 kills a last run goes to the end. Its checkpoint (parameters, BatchNorm
statistics, optimizer state, step, RNG) must equal an uninterrupted run's bit for
bit, and its summary.json and metrics.jsonl too, but for the fields that depend
on the wall clock or on the run's own start (`NOT_COMPARED`, `images_per_second`).

The seed of the random moments is printed; ``OCTFLAX_CHAOS_SEED=SEED pytest -m slow
tests/test_chaos.py`` replays it (the moments, not the machine's timing).
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from test_faults_cli import NOT_COMPARED, NOISE, cli, flags, train  # noqa: F401  (cli is a fixture)
from test_training_cli import ROOT, final_state

KILLS = 12  # At least 10 must land (a kill planned after the run's end does not).
STEPS, STEPS_PER_EPOCH, CHECKPOINT_EVERY = 32, 8, 5
CHAOS_FLAGS = ("--config.progress_bar=True", "--config.log_every_steps=1")  # A plain progress line per step.
STEP_LINE = re.compile(r": step (\d+)/(\d+)")


def _newest_checkpoint(workdir: Path) -> int:
  folder = workdir / "checkpoints"
  steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
  return max(steps, default=0)


def _plan_target(kind: str, resume: int, rng: random.Random) -> tuple[str, int | None, float]:
  """``(kind, step to wait for, delay in seconds)`` of one kill, for a run resuming from ``resume``.

  The moments are drawn from the next few steps, so that the kills spread over the whole run.
  """
  checkpoints = [c for c in range(CHECKPOINT_EVERY, STEPS, CHECKPOINT_EVERY) if c > resume] + [STEPS]
  epoch_ends = [e for e in range(STEPS_PER_EPOCH, STEPS + 1, STEPS_PER_EPOCH) if e > resume]
  if kind == "step" and resume < STEPS:
    return kind, rng.randint(resume + 1, min(STEPS, resume + 2 * CHECKPOINT_EVERY)), rng.uniform(0, 0.05)
  if kind == "save" and resume < STEPS:
    return kind, rng.choice(checkpoints[:2]), rng.uniform(0, 0.03)
  if kind == "evaluation" and epoch_ends:
    return kind, epoch_ends[0], rng.uniform(0, 0.1)
  if kind == "start":
    return kind, None, rng.uniform(0.2, 3.0)
  return "summary", None, rng.uniform(0, 0.6)


def _run_until_killed(command: list[str], env, target: tuple[str, int | None, float]) -> tuple[bool, str, str]:
  """Runs ``command``, kills it at ``target``; returns (killed, stdout, stderr)."""
  kind, step, delay = target
  process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  lines: queue.Queue[str | None] = queue.Queue()
  out: list[str] = []
  err: list[str] = []

  def read_stdout():
    for line in process.stdout:
      out.append(line)
      lines.put(line)
    lines.put(None)

  readers = [threading.Thread(target=read_stdout, daemon=True),
             threading.Thread(target=lambda: err.extend(process.stderr), daemon=True)]
  for reader in readers:
    reader.start()
  started = time.time()
  ended = False
  if kind != "start":
    while True:
      line = lines.get(timeout=200)
      if line is None:
        ended = True
        break
      match = STEP_LINE.search(line)
      if kind == "summary" and line.startswith(f"epoch {STEPS // STEPS_PER_EPOCH}:"):
        break
      if kind in ("step", "save", "evaluation") and match and int(match.group(1)) >= step:
        break
    started = time.time()
  killed = False
  if not ended:
    time.sleep(max(0.0, started + delay - time.time()))
    if process.poll() is None:
      process.send_signal(signal.SIGKILL)
      killed = True
  process.wait(timeout=200)
  for reader in readers:
    reader.join(timeout=10)
  if killed:
    assert process.returncode == -signal.SIGKILL
  return killed, "".join(out), "".join(err)


def _metrics(workdir: Path) -> list[dict]:
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  for record in records:
    record.pop("images_per_second", None)
  return records


def _summary(workdir: Path) -> dict:
  summary = json.loads((workdir / "summary.json").read_text())
  for key in NOT_COMPARED:
    summary.pop(key, None)
  return summary


def _quiet_recovery_lines(stderr: str) -> list[str]:
  """The lines of stderr that are not the ones a restart means to print."""
  allowed = (re.compile(r"checkpoint .* is damaged: .*; moved to .*, (resuming from step \d+|starting from step 0)\."),
             re.compile(r".*/run\.lock was left by pid \d+ on host .*, which no longer runs; this run takes the lock "
                        r"over\."))
  return [line for line in stderr.splitlines() if line.strip() and not any(a.fullmatch(line) for a in allowed)]


@pytest.mark.slow
def test_kill_anywhere_then_the_restarted_run_ends_as_if_never_killed(cli):
  root, env = cli
  seed = int(os.environ.get("OCTFLAX_CHAOS_SEED") or random.SystemRandom().randrange(2**31))
  print(f"\nchaos seed {seed} (replay: OCTFLAX_CHAOS_SEED={seed} pytest -m slow {__file__})", flush=True)
  rng = random.Random(seed)

  reference = root / "chaos_reference"
  done = train(root, env, reference, *CHAOS_FLAGS)
  assert done.returncode == 0, done.stderr[-3000:]

  workdir = root / f"chaos_{seed}"
  command = [sys.executable, "-m", "experiments.train", *flags(root, workdir, *CHAOS_FLAGS)]
  kinds = ["step", "save", "evaluation", "start"] * 2 + ["step", "save"]
  rng.shuffle(kinds)
  kinds += ["summary", "summary"]  # Last: once a run reaches the summary, no step is left to kill.
  history = []
  while len([h for h in history if h["killed"]]) < KILLS and len(history) < 3 * KILLS:
    resume = _newest_checkpoint(workdir)
    target = _plan_target(kinds[len(history) % len(kinds)] if len(history) < len(kinds) else "summary", resume, rng)
    killed, out, err = _run_until_killed(command, env, target)
    tmp = [p.name for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name] if (
        workdir / "checkpoints").is_dir() else []
    history.append({"kind": target[0], "at_step": target[1], "delay": round(target[2], 3), "killed": killed,
                    "resumed_from": resume, "last_line": (out.strip().splitlines() or [""])[-1][:60],
                    "save_in_flight": tmp})
    print(history[-1], flush=True)
    for noise in NOISE:
      assert noise not in out + err, f"seed {seed}, run {len(history)}: {(out + err)[-3000:]}"
    assert not _quiet_recovery_lines(err), f"seed {seed}, run {len(history)}: {err[-3000:]}"
  kills = [h for h in history if h["killed"]]
  assert len(kills) >= 10, f"seed {seed}: only {len(kills)} kills landed: {history}"
  assert {h["kind"] for h in kills} >= {"step", "save", "summary"}, f"seed {seed}: {history}"

  last = train(root, env, workdir, *CHAOS_FLAGS)
  assert last.returncode == 0, f"seed {seed}: {last.stderr[-3000:]}"
  for noise in NOISE:
    assert noise not in last.stdout + last.stderr, f"seed {seed}: {last.stderr[-3000:]}"
  assert not _quiet_recovery_lines(last.stderr), f"seed {seed}: {last.stderr[-3000:]}"

  got, want = final_state(workdir), final_state(reference)
  assert int(got["step"]) == STEPS
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b, err_msg=f"seed {seed}")
  assert _summary(workdir) == _summary(reference), f"seed {seed}"
  assert _metrics(workdir) == _metrics(reference), f"seed {seed}"
  assert not (workdir / "run.lock").exists()
