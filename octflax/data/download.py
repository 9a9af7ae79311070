"""Finding Fashion-MNIST on disk, and fetching it on first use.

`find_fashion_mnist` looks in the directory the user names, then in Debian's
folder, then in the cache (``$OCTFLAX_DATA_DIR`` if set, else
``~/.cache/octflax``; ``fashion_mnist/`` inside). When the files are in none of
them it downloads the four original gzipped IDX files from Zalando's location
(``$OCTFLAX_FASHION_MNIST_URL`` overrides it), checks each against its known
SHA-256, and renames it into the cache only when it is complete and verified,
so an interrupted or corrupt download leaves nothing behind and is retried next
time. Nothing else in octflax downloads at run time.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from octflax._data_dirs import FASHION_MNIST_DIR  # Debian's `dataset-fashion-mnist` package.
from octflax.data.errors import DataError, MissingDataError

# Zalando's download location, the one the data set's README links to (the same
# files are in github.com/zalandoresearch/fashion-mnist under data/fashion/).
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
URL_ENV = "OCTFLAX_FASHION_MNIST_URL"
CACHE_ENV = "OCTFLAX_DATA_DIR"

# File stems (without ``.gz``) of the images and labels of each split.
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# SHA-256 of the original gzipped files as Zalando serves them. Their MD5s are
# the ones torchvision and others publish (8d4fb7e6..., 25c81989..., bef4ecab...,
# bb300cfd...). Debian's package holds the same compressed data with the gzip
# header's file name and time stripped; tests/test_download.py rebuilds the
# original headers around Debian's files and checks these sums.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}

FIX_FASHION_MNIST = (
    "Install it with `apt-get install -y dataset-fashion-mnist` (Debian package, "
    "installs to /usr/share/datasets/fashion-mnist/) or pass --config.data.dir=DIR "
    "naming a directory that holds the four original IDX files "
    "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)."
)

# Seconds to wait for a name lookup, a connection or the next bytes of a file:
# without network the run stops within seconds instead of hanging.
TIMEOUT_SECONDS = 10.0
_CHUNK = 1 << 16


def cache_dir() -> Path:
  """The download cache: ``$OCTFLAX_DATA_DIR`` if set, else ``~/.cache/octflax`` (``~`` expanded)."""
  return Path(os.environ.get(CACHE_ENV) or "~/.cache/octflax").expanduser().absolute()


def find_idx_file(directory: Path, stem: str) -> Path | None:
  """The IDX file ``stem.gz`` (or the uncompressed ``stem``) in `directory`, or None."""
  for name in (stem + ".gz", stem):
    path = directory / name
    if path.is_file():
      return path
  return None


def find_fashion_mnist(data_dir: str | os.PathLike[str] | None = None, split: str = "train", *,
                       download: bool = True) -> Path:
  """The directory that holds the IDX files of a split of Fashion-MNIST.

  Looks in `data_dir` (relative, absolute or starting with ``~``), then in
  Debian's folder (`FASHION_MNIST_DIR`), then in ``cache_dir() /
  'fashion_mnist'``; when none holds the split's two files it downloads the four
  files into the cache with `download_fashion_mnist`.

  Args:
    data_dir: the directory the user named; None looks only in the others.
    split: ``'train'`` or ``'test'``.
    download: fetch the files when they are in no directory (else raise).

  Returns:
    The first directory that holds both files of the split.

  Raises:
    MissingDataError: the files are nowhere and cannot be downloaded (the
      message names the places looked in, the URL that failed and how to
      install the data).
    DataError: a download was corrupt (it was not kept).
  """
  if split not in FASHION_MNIST_FILES:
    raise DataError(f"split must be one of {', '.join(map(repr, FASHION_MNIST_FILES))}; got {split!r}.")
  cache = cache_dir() / "fashion_mnist"
  candidates = [Path(FASHION_MNIST_DIR), cache]
  if data_dir is not None:
    candidates.insert(0, Path(data_dir).expanduser().absolute())
  for directory in dict.fromkeys(candidates):  # In order, without repeats.
    if all(find_idx_file(directory, stem) for stem in FASHION_MNIST_FILES[split]):
      return directory
  what = (f"Fashion-MNIST's {split} files ({', '.join(stem + '.gz' for stem in FASHION_MNIST_FILES[split])}) "
          f"are in none of {', '.join(str(d) for d in dict.fromkeys(candidates))}")
  if not download:
    raise MissingDataError(f"{what}. " + FIX_FASHION_MNIST)
  try:
    return download_fashion_mnist(cache)
  except MissingDataError as e:
    raise MissingDataError(f"{what}, and {e}") from e


def download_fashion_mnist(directory: str | os.PathLike[str] | None = None, *, base_url: str | None = None,
                           checksums: Mapping[str, str] | None = None, progress: bool = True) -> Path:
  """Downloads the four original Fashion-MNIST files that `directory` lacks.

  Each file is streamed into a temporary file in `directory`, checked against
  its SHA-256 and renamed to its final name only then.

  Args:
    directory: where the files go; default ``cache_dir() / 'fashion_mnist'``.
    base_url: the folder URL the four files are under; default
      ``$OCTFLAX_FASHION_MNIST_URL`` or `FASHION_MNIST_URL`.
    checksums: file name -> SHA-256 (hex) of every file to fetch; default
      `FASHION_MNIST_SHA256`.
    progress: show a progress bar per file on stderr.

  Returns:
    `directory`, holding the four files.

  Raises:
    MissingDataError: a server cannot be reached or answers with an error.
    DataError: a file arrived truncated or with another SHA-256 (nothing of it
      is kept).
  """
  directory = Path(directory).expanduser() if directory is not None else cache_dir() / "fashion_mnist"
  base_url = base_url or os.environ.get(URL_ENV) or FASHION_MNIST_URL
  checksums = FASHION_MNIST_SHA256 if checksums is None else checksums
  directory.mkdir(parents=True, exist_ok=True)
  for name, sha256 in checksums.items():
    if not (directory / name).is_file():
      fetch(urllib.parse.urljoin(base_url.rstrip("/") + "/", name), directory / name, sha256, progress=progress)
  return directory


def fetch(url: str, destination: Path, sha256: str, *, progress: bool = True,
          timeout: float = TIMEOUT_SECONDS) -> Path:
  """Downloads `url` to `destination` if its content has the given SHA-256.

  Args:
    url: an ``http(s)://`` (or ``file://``) URL.
    destination: the final path; its folder must exist.
    sha256: the expected SHA-256 of the content, hex.
    progress: report on stderr: a byte-count bar (tqdm) on a terminal, else
      one line.
    timeout: seconds for the name lookup, the connection and each read.

  Returns:
    `destination`.

  Raises:
    MissingDataError: `url` cannot be reached or answers with an error.
    DataError: the content is shorter than the server announced, or has another
      SHA-256. A temporary file is never left behind.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  _check_resolves(url, timeout)
  descriptor, partial = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
  try:
    digest = hashlib.sha256()
    received = 0
    with os.fdopen(descriptor, "wb") as out, _open(url, timeout) as response:
      length = response.headers.get("Content-Length")
      expected = int(length) if length and length.isdigit() else None
      # A bar redrawn in place on a terminal; in a log, one line per file instead of carriage returns.
      interactive = progress and sys.stderr.isatty()
      if progress and not interactive:
        size = f" ({expected:,} bytes)" if expected is not None else ""
        print(f"downloading {url}{size} to {destination.parent}", file=sys.stderr, flush=True)
      with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=destination.name,
                file=sys.stderr, disable=not interactive, leave=False) as bar:
        while True:
          try:
            chunk = response.read(_CHUNK)
          except (OSError, http.client.HTTPException) as e:
            raise DataError(f"downloading {url} stopped after {received} bytes ({e}); nothing was kept, "
                            "the next run retries. " + FIX_FASHION_MNIST) from e
          if not chunk:
            break
          out.write(chunk)
          digest.update(chunk)
          received += len(chunk)
          bar.update(len(chunk))
    if expected is not None and received != expected:
      raise DataError(f"downloading {url} gave {received} bytes, the server announced {expected}; "
                      "nothing was kept, the next run retries. " + FIX_FASHION_MNIST)
    if digest.hexdigest() != sha256.lower():
      raise DataError(f"{url} has SHA-256 {digest.hexdigest()}, expected {sha256.lower()} (a corrupt or "
                      f"different file of {received} bytes); nothing was kept, the next run retries. "
                      + FIX_FASHION_MNIST)
    os.chmod(partial, 0o644)  # mkstemp's 0600 would keep a shared cache from other users.
    os.replace(partial, destination)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(partial)
  return destination


def _open(url: str, timeout: float):
  try:
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (http/https/file by design)
  except urllib.error.HTTPError as e:
    raise MissingDataError(f"downloading {url} failed: the server answered {e.code} {e.reason}. "
                           + FIX_FASHION_MNIST) from e
  except (urllib.error.URLError, OSError, ValueError) as e:
    reason = getattr(e, "reason", e)
    raise MissingDataError(f"downloading {url} failed ({reason}). " + FIX_FASHION_MNIST) from e


def _check_resolves(url: str, timeout: float) -> None:
  """Raises MissingDataError when the URL's host name cannot be looked up within `timeout`.

  urlopen's timeout does not cover the name lookup, which can hang for tens of
  seconds on a machine whose name server is unreachable; the lookup runs in a
  daemon thread so that it can be abandoned.
  """
  parts = urllib.parse.urlsplit(url)
  if parts.scheme not in ("http", "https") or not parts.hostname:
    return
  outcome: list[BaseException | None] = []

  def lookup() -> None:
    try:
      socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
      outcome.append(None)
    except OSError as e:
      outcome.append(e)

  thread = threading.Thread(target=lookup, daemon=True)
  thread.start()
  thread.join(timeout)
  if not outcome or outcome[0] is not None:
    reason = f"no answer from the name server within {timeout:g} s" if not outcome else outcome[0]
    raise MissingDataError(f"downloading {url} failed: cannot look up {parts.hostname} ({reason}). "
                           + FIX_FASHION_MNIST)
