"""The data layer: the IDX parser and every corruption, the search path, the download path against a
local HTTP server, batching, and the real Fashion-MNIST whenever it is installed."""

import functools
import gzip
import http.server
import threading

import jax
import numpy as np
import pytest

from jaxlenet import data


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    return header + np.array(array.shape, ">u4").tobytes() + array.tobytes()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No user cache, no JAXLENET_DATA, no system directory: only what a test puts there."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("JAXLENET_DATA", raising=False)
    monkeypatch.setattr(data, "SYSTEM_DIR", tmp_path / "system")
    return tmp_path


def fake_dataset(directory, *, n_train=60, n_test=10, compress=True):
    """Small IDX files with the real names, and FILES patched to their checksums and shapes."""
    rng = np.random.default_rng(0)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
              "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "test_labels": (np.arange(n_test) % 10).astype(np.uint8)}
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, array in arrays.items():
        filename = data.FILES[name][0]
        payload = idx_bytes(array)
        raw = gzip.compress(payload) if compress else payload
        (directory / (filename if compress else filename[:-3])).write_bytes(raw)
        files[name] = (filename, data.sha256(payload), array.shape)
    return arrays, files


# ------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.dtype(">i4"), np.dtype(">f4")])
def test_idx_round_trip_gz_and_raw(tmp_path, dtype):
    array = np.arange(24).reshape(2, 3, 4).astype(dtype)
    (tmp_path / "a.idx").write_bytes(idx_bytes(array))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(idx_bytes(array)))
    for name in ("a.idx", "a.idx.gz"):
        np.testing.assert_array_equal(data.read_idx(tmp_path / name), array)


@pytest.mark.parametrize("payload,match", [
    (b"\x01\x02\x08\x01" + (3).to_bytes(4, "big") + b"abc", "magic number"),
    (b"\x00\x00\x07\x01" + (3).to_bytes(4, "big") + b"abc", "element type"),
    (b"\x00\x00\x08\x03" + (3).to_bytes(4, "big"), "truncated"),
    (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc", "declares shape"),
    (b"", "magic number"),
])
def test_idx_corruptions_raise_one_clear_error(tmp_path, payload, match):
    path = tmp_path / "bad.idx"
    path.write_bytes(payload)
    with pytest.raises(data.DataError, match=match) as info:
        data.read_idx(path)
    assert "bad.idx" in str(info.value)


def test_truncated_gzip_is_a_data_error(tmp_path):
    raw = gzip.compress(idx_bytes(np.zeros((100, 28, 28), np.uint8)))
    path = tmp_path / "t.gz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(data.DataError, match="corrupt or truncated gzip"):
        data.read_idx(path)


# --------------------------------------------------------------------------------- search and load


def test_missing_files_say_where_and_how(isolated):
    with pytest.raises(data.DataError, match="apt-get install dataset-fashion-mnist") as info:
        data.load_fashion_mnist(isolated / "nowhere", allow_download=False)
    assert str(isolated / "nowhere") in str(info.value)


def test_search_order_and_loading(isolated, monkeypatch):
    arrays, files = fake_dataset(isolated / "mine", compress=False)
    monkeypatch.setattr(data, "FILES", files)
    fake_dataset(isolated / "env")  # same content, later on the path
    monkeypatch.setenv("JAXLENET_DATA", str(isolated / "env"))
    assert data.locate(isolated / "mine") == isolated / "mine"
    assert data.locate() == isolated / "env"
    (train_x, train_y), (test_x, test_y) = data.load_fashion_mnist(isolated / "mine")
    np.testing.assert_array_equal(train_x, arrays["train_images"])
    assert train_y.dtype == np.int32 and test_x.shape == (10, 28, 28)


def test_checksum_mismatch_names_the_file(isolated, monkeypatch):
    _, files = fake_dataset(isolated / "d")
    files["test_labels"] = (files["test_labels"][0], "0" * 64, files["test_labels"][2])
    monkeypatch.setattr(data, "FILES", files)
    with pytest.raises(data.DataError, match="t10k-labels.*checksum mismatch"):
        data.load_fashion_mnist(isolated / "d", allow_download=False)


def test_labels_out_of_range_are_refused(isolated, monkeypatch):
    arrays, files = fake_dataset(isolated / "d")
    bad = arrays["test_labels"].copy()
    bad[3] = 11
    payload = idx_bytes(bad)
    (isolated / "d" / files["test_labels"][0]).write_bytes(gzip.compress(payload))
    files["test_labels"] = (files["test_labels"][0], data.sha256(payload), bad.shape)
    monkeypatch.setattr(data, "FILES", files)
    with pytest.raises(data.DataError, match="test labels"):
        data.load_fashion_mnist(isolated / "d", allow_download=False)


# -------------------------------------------------------------------------------------- download


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/mirror; stopped after the test."""
    root = tmp_path / "mirror"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_verifies_and_writes_atomically(isolated, monkeypatch, mirror):
    root, url = mirror
    arrays, files = fake_dataset(root)
    monkeypatch.setattr(data, "FILES", files)
    target = isolated / "cache" / "jaxlenet" / "fashion-mnist"
    data.download(mirrors=(url,), timeout=5, retries=1, progress=False)
    assert sorted(p.name for p in target.iterdir()) == sorted(f for f, _, _ in files.values())
    (train_x, _), _ = data.load_fashion_mnist()
    np.testing.assert_array_equal(train_x, arrays["train_images"])


def test_download_falls_back_to_the_next_mirror(isolated, monkeypatch, mirror):
    root, url = mirror
    _, files = fake_dataset(root)
    monkeypatch.setattr(data, "FILES", files)
    data.download(mirrors=(url + "missing/", url), timeout=5, retries=2, progress=False)
    assert data.locate() == data.cache_dir()


def test_a_corrupt_mirror_leaves_nothing_in_the_cache(isolated, monkeypatch, mirror):
    root, url = mirror
    _, files = fake_dataset(root)
    filename = files["train_images"][0]
    raw = (root / filename).read_bytes()
    (root / filename).write_bytes(raw[: len(raw) // 2])
    monkeypatch.setattr(data, "FILES", files)
    with pytest.raises(data.DataError, match=f"could not download {filename}"):
        data.download(mirrors=(url,), timeout=5, retries=1, progress=False)
    assert not (data.cache_dir() / filename).exists()
    assert not list(data.cache_dir().glob("*.part"))


def test_no_network_is_a_clear_error(isolated, monkeypatch):
    _, files = fake_dataset(isolated / "unused")
    monkeypatch.setattr(data, "FILES", files)
    with pytest.raises(data.DataError, match="Offline"):
        data.download(mirrors=("http://127.0.0.1:9/",), timeout=2, retries=1, progress=False)


def test_a_corrupt_cached_file_is_replaced(isolated, monkeypatch, mirror):
    root, url = mirror
    arrays, files = fake_dataset(root)
    monkeypatch.setattr(data, "FILES", files)
    monkeypatch.setattr(data, "MIRRORS", (url,))
    data.download(progress=False)
    cached = data.cache_dir() / files["test_images"][0]
    cached.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc"))
    _, (test_x, _) = data.load_fashion_mnist()
    np.testing.assert_array_equal(test_x, arrays["test_images"])


# ---------------------------------------------------------------------------------------- batches


def test_batches_count_every_example_once():
    order, mask = data.batch_indices(jax.random.PRNGKey(0), 10_000, 256)
    assert order.shape == mask.shape == (40, 256)
    assert int(mask.sum()) == 10_000
    assert sorted(np.asarray(order)[np.asarray(mask)].tolist()) == list(range(10_000))
    again, _ = data.batch_indices(jax.random.PRNGKey(0), 10_000, 256)
    np.testing.assert_array_equal(order, again)
    other, _ = data.batch_indices(jax.random.PRNGKey(1), 10_000, 256)
    assert not np.array_equal(order, other)


def test_to_float_nchw():
    x = data.to_float_nchw(np.full((2, 28, 28), 255, np.uint8))
    assert x.shape == (2, 1, 28, 28) and x.dtype == np.float32 and float(x.max()) == 1.0


# ----------------------------------------------------------------------------- the real dataset


@pytest.mark.skipif(data.locate() is None, reason="Fashion-MNIST is not installed "
                    "(apt-get install dataset-fashion-mnist); .ci/run installs it")
def test_real_fashion_mnist():
    (train_x, train_y), (test_x, test_y) = data.load_fashion_mnist()
    assert train_x.shape == (60000, 28, 28) and train_x.dtype == np.uint8
    assert test_x.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(train_y), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(test_y), [1000] * 10)
    assert train_y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert len(data.CLASS_NAMES) == 10
