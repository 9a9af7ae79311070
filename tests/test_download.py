"""Tests of octflax.data.download: finding Fashion-MNIST and fetching it on first use.

A local HTTP server started in the test serves tiny valid IDX files; their
SHA-256s replace the real ones in the checksum table. No test reaches the
internet: Debian's folder is hidden and the cache is a temporary folder.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from octflax import data
from octflax.data import download

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ROOT = Path(__file__).resolve().parents[1]


def idx_gz(magic: int, array: np.ndarray) -> bytes:
  header = struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape)
  return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def tiny_fashion_files(n_train: int = 12, n_test: int = 5) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
  """The four Fashion-MNIST files (gzipped IDX) with a few random examples each."""
  rng = np.random.default_rng(0)
  files, arrays = {}, {}
  for split, count in (("train", n_train), ("test", n_test)):
    images_stem, labels_stem = download.FASHION_MNIST_FILES[split]
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, count, dtype=np.uint8)
    files[images_stem + ".gz"] = idx_gz(2051, images)
    files[labels_stem + ".gz"] = idx_gz(2049, labels)
    arrays[split] = (images, labels)
  return files, arrays


class Server:
  """An HTTP server on 127.0.0.1 serving `files`; names in `truncate` are cut in half."""

  def __init__(self, files: dict[str, bytes]):
    self.files = files
    self.truncate: set[str] = set()
    self.requests: list[str] = []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_GET(self):  # noqa: N802 (the name http.server calls)
        name = self.path.rsplit("/", 1)[-1]
        server.requests.append(name)
        if name not in server.files:
          self.send_error(404)
          return
        body = server.files[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if name in server.truncate else body)

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/fashion/"
    self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    self.thread.start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


def closed_port_url() -> str:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}/fashion/"


@pytest.fixture
def files():
  return tiny_fashion_files()


@pytest.fixture
def server(files):
  s = Server(files[0])
  yield s
  s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch, files, server):
  """An empty cache, Debian's folder hidden, the test server's URL and checksums."""
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
  monkeypatch.setenv(download.URL_ENV, server.url)
  monkeypatch.setattr(download, "FASHION_MNIST_DIR", str(tmp_path / "no-debian"))
  sums = {name: hashlib.sha256(body).hexdigest() for name, body in files[0].items()}
  monkeypatch.setattr(download, "FASHION_MNIST_SHA256", sums)
  return tmp_path / "cache" / "fashion_mnist"


def cache_listing(folder: Path) -> list[str]:
  return sorted(os.listdir(folder)) if folder.exists() else []


def test_download_lands_verified_files_in_the_cache_and_loads(cache, server, files, tmp_path):
  train = data.fashion_mnist(tmp_path / "absent", "train")
  images, labels = files[1]["train"]
  np.testing.assert_array_equal(train.images[..., 0], images)
  np.testing.assert_array_equal(train.labels, labels)
  assert cache_listing(cache) == sorted(download.FASHION_MNIST_SHA256)
  for name, body in files[0].items():
    assert (cache / name).read_bytes() == body
  assert sorted(server.requests) == sorted(download.FASHION_MNIST_SHA256)
  test = data.fashion_mnist(tmp_path / "absent", "test")
  np.testing.assert_array_equal(test.labels, files[1]["test"][1])
  assert len(server.requests) == 4  # The test split came from the cache.


def test_second_call_uses_the_cache_without_the_network(cache, server, monkeypatch):
  data.fashion_mnist(None, "train")
  monkeypatch.setenv(download.URL_ENV, closed_port_url())
  server.close()
  again = data.fashion_mnist(None, "train")
  assert len(again) == 12 and len(server.requests) == 4


def test_truncated_download_leaves_nothing_and_is_retried(cache, server):
  server.truncate.add("train-images-idx3-ubyte.gz")
  size = len(server.files["train-images-idx3-ubyte.gz"])
  with pytest.raises(data.DataError, match=rf"gave {size // 2} bytes, the server announced {size}") as info:
    data.fashion_mnist(None, "train")
  assert server.url + "train-images-idx3-ubyte.gz" in str(info.value)
  assert not [n for n in cache_listing(cache) if "train-images" in n]  # No partial file either.
  server.truncate.clear()
  assert len(data.fashion_mnist(None, "train")) == 12
  assert cache_listing(cache) == sorted(download.FASHION_MNIST_SHA256)


def test_wrong_checksum_leaves_nothing(cache, server, monkeypatch):
  sums = dict(download.FASHION_MNIST_SHA256)
  good = sums["t10k-labels-idx1-ubyte.gz"]
  sums["t10k-labels-idx1-ubyte.gz"] = "0" * 64
  monkeypatch.setattr(download, "FASHION_MNIST_SHA256", sums)
  with pytest.raises(data.DataError, match=rf"t10k-labels-idx1-ubyte.gz has SHA-256 {good}, expected 0{{64}}"):
    data.fashion_mnist(None, "test")
  assert not [n for n in cache_listing(cache) if "t10k-labels" in n]


def test_server_down_fails_fast_with_the_fix(cache, monkeypatch, tmp_path):
  url = closed_port_url()
  monkeypatch.setenv(download.URL_ENV, url)
  start = time.monotonic()
  with pytest.raises(data.MissingDataError) as info:
    data.fashion_mnist(tmp_path / "absent", "train")
  assert time.monotonic() - start < 5
  message = str(info.value)
  assert "\n" not in message
  assert f"downloading {url}train-images-idx3-ubyte.gz failed" in message
  assert f"none of {tmp_path / 'absent'}, {tmp_path / 'no-debian'}, {cache}" in message
  assert "apt-get install -y dataset-fashion-mnist" in message and "--config.data.dir=DIR" in message
  assert isinstance(info.value, FileNotFoundError)
  assert cache_listing(cache) == []


def test_server_error_status_is_reported(cache, server):
  del server.files["t10k-images-idx3-ubyte.gz"]
  with pytest.raises(data.MissingDataError, match=r"t10k-images-idx3-ubyte.gz failed: the server answered 404"):
    data.fashion_mnist(None, "test")
  assert "t10k-images-idx3-ubyte.gz" not in cache_listing(cache)


def test_unanswered_name_lookup_fails_within_the_timeout(monkeypatch):
  monkeypatch.setattr(socket, "getaddrinfo", lambda *args: time.sleep(3))
  start = time.monotonic()
  with pytest.raises(data.MissingDataError, match=r"cannot look up example\.invalid \(no answer .* 0\.2 s\)"):
    download.fetch("http://example.invalid/x.gz", Path("unused"), "0" * 64, timeout=0.2)
  assert time.monotonic() - start < 1


def test_progress_goes_to_stderr_one_line_per_file_in_a_log(cache, server, capfd):
  data.fashion_mnist(None, "test")
  captured = capfd.readouterr()
  assert captured.out == "" and "\r" not in captured.err
  size = len(server.files["t10k-images-idx3-ubyte.gz"])
  assert f"downloading {server.url}t10k-images-idx3-ubyte.gz ({size:,} bytes) to {cache}" in captured.err.splitlines()
  assert len(captured.err.splitlines()) == 4
  assert oct((cache / "t10k-images-idx3-ubyte.gz").stat().st_mode & 0o777) == oct(0o644)


def test_data_dir_relative_absolute_and_home(cache, files, server, tmp_path, monkeypatch):
  folder = tmp_path / "mine"
  folder.mkdir()
  for name, body in files[0].items():
    (folder / name).write_bytes(body)
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.chdir(tmp_path)
  for given in ("mine", str(folder), "~/mine", Path("~/mine")):
    assert download.find_fashion_mnist(given, "train") == folder.expanduser()
    assert len(data.fashion_mnist(given, "test")) == 5
  assert server.requests == [] and cache_listing(cache) == []


def test_search_order_data_dir_debian_cache(cache, files, server, tmp_path, monkeypatch):
  debian = tmp_path / "debian"
  debian.mkdir()
  for name, body in files[0].items():
    (debian / name).write_bytes(body)
  monkeypatch.setattr(download, "FASHION_MNIST_DIR", str(debian))
  assert download.find_fashion_mnist(tmp_path / "absent", "train") == debian
  assert download.find_fashion_mnist(None, "test") == debian
  (debian / "t10k-labels-idx1-ubyte.gz").unlink()  # Debian's copy lacks a test file: the cache serves.
  assert download.find_fashion_mnist(None, "train") == debian
  assert download.find_fashion_mnist(None, "test") == cache
  assert len(server.requests) == 4
  with pytest.raises(data.DataError, match="split must be one of 'train', 'test'; got 'val'"):
    download.find_fashion_mnist(None, "val")


# The gzip headers of Zalando's files: the original file name and the time they
# were written (2017-08-31 10:50:06 / 10:50:27 UTC), no extra flags, Unix.
ORIGINAL_MTIME = {
    "train-images-idx3-ubyte": 1504176606,
    "train-labels-idx1-ubyte": 1504176606,
    "t10k-images-idx3-ubyte": 1504176627,
    "t10k-labels-idx1-ubyte": 1504176627,
}


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_checksums_match_debians_files():
  """Debian's package stores Zalando's compressed data with the gzip header's name
  and time removed; restoring them must give the files the SHA-256s describe."""
  for name, sha256 in download.FASHION_MNIST_SHA256.items():
    stem = name[: -len(".gz")]
    stored = (DEBIAN_DIR / name).read_bytes()
    assert stored[:4] == b"\x1f\x8b\x08\x00"  # gzip, deflate, no file name.
    original = (b"\x1f\x8b\x08\x08" + struct.pack("<I", ORIGINAL_MTIME[stem]) + stored[8:10]
                + stem.encode() + b"\x00" + stored[10:])
    assert hashlib.sha256(original).hexdigest() == sha256, name


@pytest.mark.slow
def test_trainer_without_data_or_network_stops_with_one_line(tmp_path):
  env = dict(os.environ, **{download.CACHE_ENV: str(tmp_path / "cache"), download.URL_ENV: closed_port_url(),
                            "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)})
  # Hides Debian's folder in the child process, then runs the command-line tool.
  code = ("import sys; from octflax.data import download; download.FASHION_MNIST_DIR = sys.argv.pop(1); "
          "from experiments import train; sys.argv[0] = 'train'; train.run()")
  start = time.monotonic()
  result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "no-debian"), f"--workdir={tmp_path / 'run'}",
                           f"--config.data.dir={tmp_path / 'absent'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  elapsed = time.monotonic() - start
  assert result.returncode == 1, result.stderr
  error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(error_lines) == 1 and "Traceback" not in result.stderr
  assert "apt-get install -y dataset-fashion-mnist" in error_lines[0] and "failed" in error_lines[0]
  assert elapsed < 60  # Mostly interpreter and jax start-up; the network part fails at once.
  assert not (tmp_path / "cache" / "fashion_mnist").exists() or not os.listdir(tmp_path / "cache" / "fashion_mnist")


@pytest.mark.slow
def test_trainer_downloads_verifies_and_trains(cache, server, tmp_path):
  from octflax import training

  config = training.default_config()
  config.model.name, config.model.alpha = "oct_resnet20", 0.5
  config.model.overrides.stage_sizes = (1, 1)
  config.model.overrides.widths = (4, 8)
  config.model.overrides.stem_features = 4
  config.data.dir = str(tmp_path / "absent")
  config.batch_size = 8  # 12 training examples: one step on the 8 simulated devices.
  config.num_epochs = 1
  config.progress_bar = False
  summary = training.train_and_evaluate(config, str(tmp_path / "run"))
  assert (summary["steps"], summary["train_examples"]) == (1, 12)
  assert 0 <= summary["test_accuracy"] <= 1
  assert sorted(server.requests) == cache_listing(cache) == sorted(download.FASHION_MNIST_SHA256)
