import dataclasses
import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest
import torch

from tests.helpers import write_dataset
from training.data import (
    Batch,
    DataUnavailableError,
    download_file,
    ensure_dataset,
    load_split,
    random_shift,
    resolve_data_dir,
    train_val_split,
)
from training.idx import IMAGE_MAGIC, LABEL_MAGIC, IDXError, read_idx, write_idx
from training.task_registry import SOURCES


def test_idx_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz", IMAGE_MAGIC), images)


def test_idx_rejects_wrong_magic(tmp_path):
    write_idx(tmp_path / "labels.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(IDXError, match="magic number 2049, expected 2051"):
        read_idx(tmp_path / "labels.gz", IMAGE_MAGIC)


def test_idx_rejects_truncated_payload(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((4, 28, 28), dtype=np.uint8))
    raw = gzip.decompress((tmp_path / "x.gz").read_bytes())
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(IDXError, match="truncated"):
        read_idx(tmp_path / "short.gz", IMAGE_MAGIC)


def test_idx_rejects_truncated_gzip_stream(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((4, 28, 28), dtype=np.uint8))
    data = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(IDXError, match="not a complete gzip file"):
        read_idx(tmp_path / "cut.gz", IMAGE_MAGIC)


def test_idx_missing_file(tmp_path):
    with pytest.raises(IDXError, match="not found"):
        read_idx(tmp_path / "nope.gz", LABEL_MAGIC)


def test_load_split_and_validation_carved_from_the_end(synthetic_data_dir):
    images, labels = load_split("mnist", "train", synthetic_data_dir)
    assert images.shape == (640, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (640,) and labels.dtype == torch.int64
    (tx, ty), (vx, vy) = train_val_split(images, labels, 100)
    assert len(tx) == 540 and len(vx) == 100
    assert torch.equal(vx, images[-100:]) and torch.equal(ty, labels[:540])
    with pytest.raises(ValueError, match="val_size"):
        train_val_split(images, labels, 640)


def test_real_mnist_files_read(real_data_root):
    images, labels = load_split("mnist", "test", real_data_root)
    assert images.shape == (10_000, 1, 28, 28)
    assert labels[:6].tolist() == [7, 2, 1, 0, 4, 1]


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSNET_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir("mnist", tmp_path / "flag") == tmp_path / "flag" / "mnist"
    assert resolve_data_dir("mnist") == tmp_path / "env" / "mnist"
    monkeypatch.delenv("CAPSNET_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_dir("fashion-mnist") == tmp_path / "cache" / "capsnet" / "fashion-mnist"


def test_random_shift_moves_content_within_bounds():
    img = torch.zeros(64, 1, 28, 28)
    img[:, :, 14, 14] = 1.0
    out = random_shift(img, 2, torch.Generator().manual_seed(0))
    assert out.shape == img.shape
    ys, xs = torch.nonzero(out[:, 0] == 1.0, as_tuple=True)[1:]
    assert len(ys) == 64  # every image keeps its one bright pixel
    assert ys.min() >= 12 and ys.max() <= 16 and xs.min() >= 12 and xs.max() <= 16
    assert len(set(zip(ys.tolist(), xs.tolist(), strict=True))) > 10  # and the shifts vary
    assert torch.equal(random_shift(img, 0, torch.Generator()), img)


@pytest.fixture
def local_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; yields its base URL."""
    root = tmp_path / "served"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root
    server.shutdown()
    server.server_close()


def test_download_accepts_good_file(local_server, tmp_path):
    url, root = local_server
    (root / "f.bin").write_bytes(b"capsules" * 1000)
    digest = hashlib.sha256(b"capsules" * 1000).hexdigest()
    download_file(url + "f.bin", tmp_path / "out" / "f.bin", digest)
    assert (tmp_path / "out" / "f.bin").read_bytes() == b"capsules" * 1000


def test_download_rejects_checksum_mismatch_and_leaves_nothing(local_server, tmp_path):
    url, root = local_server
    (root / "f.bin").write_bytes(b"tampered")
    dest = tmp_path / "out" / "f.bin"
    with pytest.raises(ValueError, match="checksum mismatch"):
        download_file(url + "f.bin", dest, "0" * 64)
    assert list((tmp_path / "out").iterdir()) == []  # neither the file nor a temp file


def test_ensure_dataset_downloads_verified_files_from_a_mirror(local_server, tmp_path, monkeypatch):
    url, root = local_server
    write_dataset_files = {}
    rng = np.random.default_rng(0)
    for name, arr in (("train-images-idx3-ubyte.gz", rng.integers(0, 255, (3, 28, 28))),
                      ("train-labels-idx1-ubyte.gz", np.array([1, 2, 3])),
                      ("t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (2, 28, 28))),
                      ("t10k-labels-idx1-ubyte.gz", np.array([4, 5]))):
        write_idx(root / name, arr.astype(np.uint8))
        write_dataset_files[name] = hashlib.sha256((root / name).read_bytes()).hexdigest()
    spec = dataclasses.replace(SOURCES["mnist"], sha256=write_dataset_files, mirrors=(url,))
    monkeypatch.setitem(SOURCES, "mnist", spec)
    target = tmp_path / "data"
    assert ensure_dataset("mnist", target) == target / "mnist"  # a data root: one folder per dataset
    images, labels = load_split("mnist", "test", target)
    assert labels.tolist() == [4, 5] and images.shape == (2, 1, 28, 28)


def test_missing_files_without_network_say_where_to_put_them(tmp_path):
    with pytest.raises(DataUnavailableError) as err:
        ensure_dataset("mnist", tmp_path / "empty", mirrors=("http://127.0.0.1:9/",))
    message = str(err.value)
    assert str(tmp_path / "empty") in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "CAPSNET_DATA_DIR" in message
    assert not [p for p in (tmp_path / "empty").rglob("*") if p.is_file()]  # no partial file


def test_real_data_tests_look_where_the_clis_look_first(monkeypatch, tmp_path):
    from tests.helpers import SHARED_DATA, real_data_roots

    monkeypatch.setenv("CAPSNET_DATA_DIR", str(tmp_path))
    assert real_data_roots() == [tmp_path, SHARED_DATA]
    monkeypatch.delenv("CAPSNET_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert real_data_roots() == [tmp_path / "cache" / "capsnet", SHARED_DATA]


def test_a_single_dataset_folder_given_as_the_root_is_a_clear_error(tmp_path):
    write_dataset(tmp_path / "mnist-files")
    with pytest.raises(DataUnavailableError, match="one folder per dataset") as err:
        ensure_dataset("mnist", tmp_path / "mnist-files", mirrors=("http://127.0.0.1:9/",))
    assert str(tmp_path) in str(err.value)
    assert not (tmp_path / "mnist-files" / "mnist").exists()  # nothing downloaded beneath it


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                    reason="needs a CUDA GPU")]),
])
def test_batch_to_device_keeps_values_and_copies_a_self_target_once(device):
    images, labels = torch.rand(4, 1, 28, 28), torch.arange(4)
    moved = Batch(images, labels, images).to(torch.device(device))
    assert moved.targets is moved.images and moved.images.device.type == device
    assert torch.equal(moved.images.cpu(), images) and torch.equal(moved.labels.cpu(), labels)
    other = Batch(images, labels, images * 0.5).to(torch.device(device))
    assert other.targets is not other.images and torch.equal(other.targets.cpu(), images * 0.5)
