"""CIFAR-10 sources and cache on tiny synthetic copies: every layout decodes to the same pixels, every
bad source gets its own message, and the cache notices stale and corrupt files. No real data needed."""

from __future__ import annotations

import os
import pickle
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fasttrick.data as data_pkg
from fasttrick.data import DataSourceError, build_loader, load_cifar10
from fasttrick.data import decode as src_decode
from fasttrick.data import sources as src
from fasttrick.data.sources import Cifar10, Source

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PER_CLASS = {"train": 2, "test": 1}


@pytest.fixture(autouse=True)
def no_configured_source(monkeypatch, tmp_path):
    """Keep the developer's or CI's FASTTRICK_DATA / FASTTRICK_CACHE out of these tests."""
    monkeypatch.delenv(src.DATA_ENV, raising=False)
    monkeypatch.setenv(src.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture
def tiny() -> Cifar10:
    """2 train and 1 test image per class, random pixels, sorted by class as every decoder returns them."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in PER_CLASS.items():
        images = rng.integers(0, 256, size=(10 * count, 32, 32, 3), dtype=np.uint8)
        arrays[split] = images, np.repeat(np.arange(10), count)
    return Cifar10.from_arrays(*arrays["train"], *arrays["test"], CLASSES, "tiny")


def write_image_folder(root: Path, data: Cifar10, classes=CLASSES, size=32) -> Path:
    for split in ("train", "test"):
        images, labels = data.split(split)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            if label >= len(classes):
                continue
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            # PNG: lossless, so decoded pixels must equal the written ones exactly.
            Image.fromarray(image).resize((size, size)).save(folder / f"{i:05d}.png")
    return root


def write_python_batches(folder: Path, data: Cifar10) -> Path:
    """torchvision's layout: pickled dicts of planar CHW rows; the train set split over 5 batches."""
    folder.mkdir(parents=True)

    def dump(name, images, labels):
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
        (folder / name).write_bytes(pickle.dumps({b"data": rows, b"labels": labels.tolist()}))

    for i, part in enumerate(np.array_split(np.arange(len(data.train_images)), 5), start=1):
        dump(f"data_batch_{i}", data.train_images[part], data.train_labels[part])
    dump("test_batch", data.test_images, data.test_labels)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CLASSES]}))
    return folder


def write_tar(archive: Path, folder: Path, arcname: str) -> Path:
    mode = {".tar": "w", ".gz": "w:gz", ".xz": "w:xz"}[archive.suffix]
    with tarfile.open(archive, mode) as tar:
        tar.add(folder, arcname=arcname)
    return archive


def make_layout(kind: str, tmp: Path, data: Cifar10) -> Path:
    if kind == "folder":
        return write_image_folder(tmp / "cifar", data)
    if kind.startswith("folder.tar"):
        # Members below a top-level folder (cifar10/train/<class>/...), as archives usually are.
        return write_tar(tmp / f"cifar10.{kind[7:]}", write_image_folder(tmp / "cifar", data), "cifar10")
    if kind == "dir with one archive":
        write_tar(tmp / "store" / "cifar10.tar.xz", write_image_folder(tmp / "cifar", data), ".")
        return tmp / "store"
    if kind == "batches":
        return write_python_batches(tmp / "cifar-10-batches-py", data)
    if kind == "dir with batches":
        write_python_batches(tmp / "cifar-10-batches-py", data)
        return tmp
    if kind == "python archive":
        batches = write_python_batches(tmp / "cifar-10-batches-py", data)
        return write_tar(tmp / "cifar-10-python.tar.gz", batches, "cifar-10-batches-py")
    raise AssertionError(kind)


LAYOUTS = [
    "folder",
    "folder.tar",
    "folder.tar.gz",
    "folder.tar.xz",
    "dir with one archive",
    "batches",
    "dir with batches",
    "python archive",
]


@pytest.mark.parametrize("kind", LAYOUTS)
def test_every_layout_decodes_to_the_same_pixels(kind, tmp_path, tiny):
    (tmp_path / "store").mkdir()
    decoded = src.decode_source(Source(make_layout(kind, tmp_path, tiny), "test"))
    assert decoded.classes == CLASSES
    for split in ("train", "test"):
        np.testing.assert_array_equal(decoded.split(split)[0], tiny.split(split)[0])
        np.testing.assert_array_equal(decoded.split(split)[1], tiny.split(split)[1])
        assert decoded.split(split)[0].dtype == np.uint8 and decoded.split(split)[1].dtype == np.int64
    np.testing.assert_allclose(decoded.mean, tiny.train_images.reshape(-1, 3).mean(0))
    np.testing.assert_allclose(decoded.std, tiny.train_images.reshape(-1, 3).std(0))


# ---------------------------------------------------------------------------------------------
# One clear message per bad source
# ---------------------------------------------------------------------------------------------


def test_missing_path_names_it_and_the_variable(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(src.DATA_ENV, str(missing))
    with pytest.raises(DataSourceError, match=r"nowhere \(from FASTTRICK_DATA\) does not exist") as info:
        load_cifar10()
    assert "train/<class>" in str(info.value) and "cifar-10-batches-py" in str(info.value)


def test_wrong_layout_lists_what_it_found(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "notes.txt").write_text("not CIFAR")
    with pytest.raises(DataSourceError, match="No CIFAR-10 found in") as info:
        load_cifar10(tmp_path)
    assert "Found there: images, notes.txt" in str(info.value) and "Expected one of" in str(info.value)


def test_several_archives_ask_to_name_one(tmp_path):
    for name in ("a.tar", "b.tar.xz"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataSourceError, match=r"several archives \(a.tar, b.tar.xz\); name one"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("damage", ["truncated .tar.xz", "random bytes .tar.gz"])
def test_damaged_archive(damage, tmp_path, tiny):
    if damage == "truncated .tar.xz":
        intact = make_layout("folder.tar.xz", tmp_path, tiny).read_bytes()
        archive = tmp_path / "damaged.tar.xz"
        archive.write_bytes(intact[: len(intact) // 2])
    else:
        archive = tmp_path / "damaged.tar.gz"
        archive.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(
        DataSourceError, match=r"(?s)Could not read archive .*damaged.*The file is damaged or truncated"
    ):
        load_cifar10(archive)


def test_archive_without_cifar_layout(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "readme.md").write_text("hello")
    archive = write_tar(tmp_path / "other.tar", tmp_path / "x", "x")
    with pytest.raises(DataSourceError, match=r"holds no CIFAR-10 layout \(its files start: x/readme.md\)"):
        load_cifar10(archive)


def test_wrong_number_of_classes(tmp_path, tiny):
    root = write_image_folder(tmp_path / "nine", tiny, classes=CLASSES[:9])
    with pytest.raises(DataSourceError, match=r"has 9 class folders .*CIFAR-10 has 10"):
        load_cifar10(root)


def test_train_and_test_classes_differ(tmp_path, tiny):
    root = write_image_folder(tmp_path / "c", tiny)
    (root / "test" / "truck").rename(root / "test" / "lorry")
    with pytest.raises(DataSourceError, match=r"different class folders \(only in one: lorry, truck\)"):
        load_cifar10(root)


def test_unreadable_image_is_named(tmp_path, tiny):
    root = write_image_folder(tmp_path / "c", tiny)
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(DataSourceError, match=r"train/cat/broken.jpg is not a readable image"):
        load_cifar10(root)


def test_wrong_image_size(tmp_path, tiny):
    root = write_image_folder(tmp_path / "c", tiny, size=28)
    with pytest.raises(DataSourceError, match="is 28x28; CIFAR-10 images are 32x32"):
        load_cifar10(root)


def test_incomplete_batches(tmp_path, tiny):
    batches = write_python_batches(tmp_path / "cifar-10-batches-py", tiny)
    (batches / "data_batch_5").unlink()
    with pytest.raises(DataSourceError, match="lacks data_batch_5"):
        load_cifar10(batches)
    (batches / "data_batch_5").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataSourceError, match="data_batch_5 is damaged"):
        load_cifar10(batches)


class Payload:
    """Pickles as a call of os.mkdir(marker): an unpickler that runs code leaves the marker behind."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("where", ["batch", "meta", "python archive"])
def test_a_planted_batch_payload_is_refused_unrun(tmp_path, tiny, where):
    batches = write_python_batches(tmp_path / "cifar-10-batches-py", tiny)
    name = "batches.meta" if where == "meta" else "data_batch_3"
    planted = pickle.loads((batches / name).read_bytes())
    planted[b"label_names" if where == "meta" else b"labels"].append(Payload(tmp_path / "ran"))
    (batches / name).write_bytes(pickle.dumps(planted))
    source = batches
    if where == "python archive":
        source = write_tar(tmp_path / "cifar-10-python.tar.gz", batches, "cifar-10-batches-py")
    with pytest.raises(DataSourceError, match=rf"{name} is damaged or not a CIFAR-10 batch .*names (posix|os)\.mkdir"):
        load_cifar10(source)
    assert not (tmp_path / "ran").exists()


def test_real_batches_unpickle_as_before(tmp_path, tiny):
    """The restricted unpickler admits the original files' numpy arrays (protocol 2 and 5 alike)."""
    for protocol in (2, 5):
        folder = tmp_path / f"p{protocol}"
        folder.mkdir()
        rows = tiny.train_images.transpose(0, 3, 1, 2).reshape(len(tiny.train_images), -1)
        (folder / "b").write_bytes(pickle.dumps({b"data": rows, b"labels": [1, 2]}, protocol=protocol))
        batch = src_decode._unpickle((folder / "b").read_bytes(), "b")
        assert np.array_equal(batch[b"data"], rows) and batch[b"labels"] == [1, 2]


def test_well_formed_but_not_the_full_set(tmp_path, tiny):
    with pytest.raises(DataSourceError, match=r"not complete CIFAR-10: it holds 20 training images .*50,000"):
        load_cifar10(write_image_folder(tmp_path / "c", tiny))


def test_offline_with_nothing_configured(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)  # torchvision's download goes through urlopen
    with pytest.raises(DataSourceError) as info:
        load_cifar10()
    message = str(info.value)
    assert "FASTTRICK_DATA unset" in message
    assert str(tmp_path / "cache" / "torchvision") in message
    assert "cifar-10-python.tar.gz" in message and "offline?" in message


# ---------------------------------------------------------------------------------------------
# Cache: atomic, verified, rebuilt when stale or corrupt
# ---------------------------------------------------------------------------------------------


def test_cache_round_trip_and_no_temp_files(tmp_path, tiny):
    path = tmp_path / "c.npz"
    src.write_cache(path, tiny, "fp")
    cached = src.read_cache(path, "fp")
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(cached, name), getattr(tiny, name))
    assert (cached.classes, cached.mean, cached.std) == (tiny.classes, tiny.mean, tiny.std)
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]


def test_failed_write_keeps_the_old_cache(monkeypatch, tmp_path, tiny):
    path = tmp_path / "c.npz"
    src.write_cache(path, tiny, "old")
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        src.write_cache(path, tiny, "new")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]


@pytest.mark.parametrize("problem", ["stale", "flipped pixel", "truncated", "missing"])
def test_unusable_cache_reads_as_none(problem, tmp_path, tiny):
    path = tmp_path / "c.npz"
    src.write_cache(path, tiny, "fp")
    raw = bytearray(path.read_bytes())
    fingerprint = "fp"
    if problem == "stale":
        fingerprint = "source changed"
    elif problem == "flipped pixel":
        raw[raw.find(tiny.train_images.tobytes()) + 100] ^= 1  # the zip stays valid; only the CRC can tell
        path.write_bytes(raw)
    elif problem == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    else:
        path.unlink()
    assert src.read_cache(path, fingerprint) is None


def test_load_decodes_once_then_rebuilds_when_stale_or_corrupt(monkeypatch, tmp_path, tiny):
    root = write_image_folder(tmp_path / "c", tiny)
    monkeypatch.setattr(src, "verify", lambda data: None)  # tiny is not 50 000 images; the flow is under test
    decodes = []
    decode = src.decode_source
    monkeypatch.setattr(src, "decode_source", lambda source: decodes.append(source) or decode(source))
    cache_dir = tmp_path / "cache"

    first = load_cifar10(root, cache_dir=cache_dir)
    second = load_cifar10(root, cache_dir=cache_dir)
    assert len(decodes) == 1
    np.testing.assert_array_equal(first.train_images, second.train_images)

    next((root / "train" / "cat").iterdir()).unlink()  # source changed: the class folder's mtime moves
    assert len(load_cifar10(root, cache_dir=cache_dir).train_images) == 19 and len(decodes) == 2

    [cache_file] = cache_dir.iterdir()
    cache_file.write_bytes(cache_file.read_bytes()[:1000])
    assert len(load_cifar10(root, cache_dir=cache_dir).train_images) == 19 and len(decodes) == 3


# ---------------------------------------------------------------------------------------------
# build_loader's choice of backend
# ---------------------------------------------------------------------------------------------


def test_auto_falls_back_to_torch_and_explicit_dali_raises(monkeypatch, tiny):
    missing = ImportError("No module named 'nvidia.dali'")
    monkeypatch.setattr(data_pkg, "dali_import_error", lambda: missing)
    loader = build_loader("train", dataset=tiny, backend="auto", device="cpu", batch_size=4)
    assert isinstance(loader, data_pkg.TorchLoader)
    with pytest.raises(ImportError, match="backend='dali' needs NVIDIA DALI") as info:
        build_loader("train", dataset=tiny, backend="dali", device="cpu", batch_size=4)
    assert info.value.__cause__ is missing


def test_auto_picks_dali_when_it_imports(tiny):
    pytest.importorskip("nvidia.dali", reason="DALI not installed")
    from fasttrick.data.dali_loader import DaliLoader

    assert isinstance(build_loader("test", dataset=tiny, backend="auto", device="cpu"), DaliLoader)


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        build_loader("val", dataset=tiny)
    with pytest.raises(ValueError, match="backend must be one of"):
        build_loader("train", dataset=tiny, backend="ffcv")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        build_loader("train", dataset=tiny, batch_size=0)


def test_package_import_does_not_import_dali():
    import subprocess
    import sys

    code = "import sys, fasttrick.data; print('nvidia.dali' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_torch_loader_on_cpu_shares_the_arrays(tiny):
    loader = build_loader("train", dataset=tiny, backend="torch", device="cpu", batch_size=4)
    # Held once: the resident tensor is the NumPy array's memory, not a copy.
    assert loader._images.data_ptr() == tiny.train_images.ctypes.data
    assert loader._images.dtype == torch.uint8
