"""Counter-based pseudo-random numbers: pure functions of integer keys.

Shuffles and augmentations are functions of ``(seed, epoch, example index)``
so a run can be reproduced, resumed mid-epoch and split over any number of
processes with identical results. A counter-based generator makes this
vectorised: a splitmix64 mix of the keys gives each example its own stream
without per-example generator objects, and the numbers do not depend on the
NumPy version.
"""

from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)

# Stream tags, so that streams for different purposes never coincide.
TAG_SHUFFLE = 0x5348554646
TAG_AUGMENT = 0x4155474D
TAG_SYNTHETIC_LABEL = 0x53594E4C


def _mix(z: np.ndarray) -> np.ndarray:
  """The splitmix64 finaliser on a uint64 array (a bijection of 64-bit words)."""
  z = z + _GOLDEN
  z = (z ^ (z >> np.uint64(30))) * _MUL1
  z = (z ^ (z >> np.uint64(27))) * _MUL2
  return z ^ (z >> np.uint64(31))


def _as_words(key: int | np.ndarray) -> np.ndarray:
  if isinstance(key, (int, np.integer)):
    return np.array([int(key) & _MASK64], dtype=np.uint64)
  return np.asarray(key).astype(np.int64).astype(np.uint64)


def hash_keys(*keys: int | np.ndarray) -> np.ndarray:
  """Hashes integer keys (Python ints or integer arrays, broadcast) to uint64.

  Args:
    *keys: integers or integer arrays; arrays broadcast against each other.

  Returns:
    A uint64 array (at least 1-D) of the broadcast shape.
  """
  h = np.zeros(1, dtype=np.uint64)
  with np.errstate(over="ignore"):
    for key in keys:
      h = _mix(h ^ _as_words(key))
  return h


def uniform(*keys: int | np.ndarray, draws: int) -> np.ndarray:
  """Uniform floats in [0, 1) that are a pure function of the keys.

  Args:
    *keys: integer keys as for `hash_keys`; the last is typically a 1-D array
      of example indices.
    draws: number of independent numbers per key combination.

  Returns:
    A float64 array of shape ``hash_keys(*keys).shape + (draws,)``.
  """
  h = hash_keys(*keys)
  with np.errstate(over="ignore"):
    z = _mix(h[..., None] ^ _mix(np.arange(draws, dtype=np.uint64)))
  return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def permutation(n: int, *keys: int) -> np.ndarray:
  """A pseudo-random permutation of ``range(n)``, a pure function of the keys.

  Args:
    n: length of the permutation.
    *keys: integer keys (for example a tag, the seed and the epoch).

  Returns:
    An int64 array holding each of ``0 .. n-1`` once.
  """
  scores = hash_keys(*keys, np.arange(n, dtype=np.int64))
  return np.argsort(scores, kind="stable").astype(np.int64)
