"""A CIFAR-10 source is refused from its names and sizes, before its contents are read: a 2 GiB member,
too many members, too many bytes, an oversized tar header or an image declaring millions of pixels.
The cache rebuilds when its metadata lacks a field, and keeps the user's umask."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fasttrick.data import DataSourceError, bounds, cache, decode, load_cifar10
from fasttrick.data.cifar import Cifar10

TWO_GIB = 2 << 30
# GNU tar writes sparse members (bsdtar's options differ): the way to a tiny archive of a 2 GiB member.
GNU_TAR = (
    shutil.which("tar") is not None
    and "GNU tar" in subprocess.run(["tar", "--version"], capture_output=True, text=True, check=False).stdout
)


@pytest.fixture(autouse=True)
def no_configured_source(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTTRICK_DATA", raising=False)
    monkeypatch.setenv("FASTTRICK_CACHE", str(tmp_path / "cache"))


def sparse_archive(tmp_path: Path, member: str) -> Path:
    """A .tar.xz of a few hundred bytes holding one 2 GiB member of zeros (GNU tar stores the hole)."""
    src = tmp_path / "src"
    (src / member).parent.mkdir(parents=True, exist_ok=True)
    with open(src / member, "wb") as f:
        f.truncate(TWO_GIB)
    archive = tmp_path / "bomb.tar.xz"
    subprocess.run(["tar", "--sparse", "-cJf", str(archive), "-C", str(src), member], check=True)
    (src / member).unlink()
    return archive


MEASURE = """
import resource, sys, time
from fasttrick.data import DataSourceError, load_cifar10
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    load_cifar10(sys.argv[1])
    print("accepted")
except DataSourceError as err:
    print("refused", time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    print(err)
"""


def refusal(archive: Path, tmp_path: Path) -> tuple[float, int, str]:
    """(seconds, KiB of peak memory grown, message) of refusing ``archive``, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "FASTTRICK_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(archive)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    verdict, seconds, grown_kib = done.stdout.splitlines()[0].split()
    assert verdict == "refused", done.stdout
    return float(seconds), int(grown_kib), done.stdout


MEMBERS = ["big", "cifar10/train/cat/0001.png", "cifar-10-batches-py/data_batch_1"]


@pytest.mark.parametrize("member", MEMBERS)
def test_a_two_gib_member_of_zeros_is_refused_in_a_second_with_little_memory(tmp_path, member):
    archive = zero_member_tar_gz(tmp_path / "zeros.tar.gz", member)
    assert archive.stat().st_size < 4 << 20
    seconds, grown_kib, message = refusal(archive, tmp_path)
    assert seconds < 2.0
    assert grown_kib < 200 * 1024  # ru_maxrss is in KiB on Linux
    assert f"{member} is 2,048.0 MiB" in message and "refused before reading it" in message


@pytest.mark.skipif(not GNU_TAR, reason="needs GNU tar to write a sparse member")
def test_a_sparse_two_gib_member_in_a_tiny_tar_xz_is_refused_likewise(tmp_path):
    member = "cifar10/train/cat/0001.png"
    archive = sparse_archive(tmp_path, member)
    assert archive.stat().st_size < 4096
    seconds, grown_kib, message = refusal(archive, tmp_path)
    assert seconds < 2.0 and grown_kib < 200 * 1024
    assert f"{member} is 2,048.0 MiB" in message


@pytest.mark.skipif(not GNU_TAR, reason="needs GNU tar to write sparse members")
@pytest.mark.parametrize("layout", [["--format=gnu"], ["--format=posix", "--sparse-version=1.0"]])
def test_a_sparse_member_with_an_unbounded_hole_map_is_refused(tmp_path, layout):
    src = tmp_path / "src" / "train" / "cat"
    src.mkdir(parents=True)
    with open(src / "holes.png", "wb") as f:  # 8 islands of data: more holes than a GNU header's 4 slots
        for i in range(8):
            f.seek(i << 20)
            f.write(b"x")
    archive = tmp_path / "holes.tar"
    command = ["tar", "--sparse", *layout, "-cf", str(archive), "-C", str(tmp_path / "src"), "train"]
    subprocess.run(command, check=True)
    with pytest.raises(DataSourceError, match=r"train/cat/holes.png, a sparse file with a"):
        load_cifar10(archive)


def zero_member_tar_gz(archive: Path, member: str, size: int = TWO_GIB) -> Path:
    """A .tar.gz of ~2 MB holding one member of ``size`` zero bytes (a multiple of 16 MiB), written in about a
    second: deflate restarts after a full flush, so one compressed block of zeros is repeated, not recomputed."""
    header = tarfile.TarInfo(member)
    header.size = size
    header_bytes, end, zeros = header.tobuf(format=tarfile.GNU_FORMAT), bytes(2 * tarfile.BLOCKSIZE), bytes(16 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = deflate.compress(header_bytes) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.compress(end) + deflate.flush(zlib.Z_FINISH)
    crc = zlib.crc32(header_bytes)
    with open(archive, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + head)  # gzip header: deflate, no name
        for _ in range(size // len(zeros)):
            f.write(block)
            crc = zlib.crc32(zeros, crc)
        f.write(tail)
        crc = zlib.crc32(end, crc)
        f.write(struct.pack("<II", crc, (len(header_bytes) + size + len(end)) & 0xFFFFFFFF))
    return archive


def write_members(archive: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def test_member_count_and_totals_are_bounded(monkeypatch, tmp_path):
    members = {f"train/cat/{i}.png": b"x" * 100 for i in range(10)}
    archive = write_members(tmp_path / "many.tar.gz", members)
    monkeypatch.setattr(bounds, "MAX_MEMBERS", 5)
    with pytest.raises(DataSourceError, match="more than 5 members"):
        load_cifar10(archive)
    monkeypatch.setattr(bounds, "MAX_MEMBERS", 100)
    monkeypatch.setattr(bounds, "MAX_READ_BYTES", 500)
    with pytest.raises(DataSourceError, match="CIFAR-10 files pass"):
        load_cifar10(archive)
    monkeypatch.setattr(bounds, "MAX_READ_BYTES", 10_000)
    monkeypatch.setattr(bounds, "MAX_TOTAL_BYTES", 500)
    with pytest.raises(DataSourceError, match="members pass"):
        load_cifar10(archive)


def test_member_kinds():
    assert bounds.member_kind("cifar-10-batches-py/data_batch_3") == "batch"
    assert bounds.member_kind("x/cifar-10-batches-py/batches.meta") == "batch"
    assert bounds.member_kind("data/train/cat/1.png") == "image"
    assert bounds.member_kind("train/cat/.DS_Store") == "other"
    assert bounds.member_kind("README.md") == "other"
    assert bounds.member_kind("other/data_batch_1") == "other"


def test_an_oversized_extended_header_is_refused_unread(tmp_path):
    archive = tmp_path / "pax.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("train/cat/1.png")
        info.pax_headers = {"comment": "x" * (2 << 20)}
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(DataSourceError, match="extended header of"):
        load_cifar10(archive)


def sparse_file(path: Path, size: int = TWO_GIB) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def test_folders_check_sizes_before_reading(tmp_path):
    folder = tmp_path / "images"
    for split in ("train", "test"):
        (folder / split / "cat").mkdir(parents=True)
    sparse_file(folder / "train" / "cat" / "huge.png")
    with pytest.raises(DataSourceError, match=r"train/cat/huge.png is 2,048.0 MiB"):
        load_cifar10(folder)
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    sparse_file(batches / "data_batch_1")
    with pytest.raises(DataSourceError, match=r"data_batch_1 is 2,048.0 MiB.*python batch"):
        load_cifar10(batches)


def test_files_beside_the_batches_are_not_read(monkeypatch, tmp_path):
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (batches / name).write_bytes(b"")
    sparse_file(batches / "notes.bin")
    read = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self.name) or real(self))
    with pytest.raises(DataSourceError, match="damaged or not a CIFAR-10 batch"):
        load_cifar10(batches)
    assert "notes.bin" not in read


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels, with a few bytes of (truncated) data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [9000, 60000])
def test_an_image_is_refused_by_its_declared_size(side):
    files = {(split, str(c)): [(f"{split}/{c}/0.png", SMALL_PNG)] for split in ("train", "test") for c in range(10)}
    files["train", "3"].append(("train/3/big.png", png_declaring(side, side)))
    declared = rf"is {side}x{side}" if side * side < Image.MAX_IMAGE_PIXELS * 2 else "declares a huge image"
    with pytest.raises(DataSourceError, match=rf"big.png {declared}.*CIFAR-10 images are 32x32"):
        decode.decode_folder_files(files, "here")


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


SMALL_PNG = _png(np.zeros((32, 32, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------


def small_data() -> Cifar10:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(20) % 10
    return Cifar10.from_arrays(images, labels, images[:10], labels[:10], [str(i) for i in range(10)], "test")


@pytest.mark.parametrize("field", ["crc32", "classes", "mean", "std", "source"])
def test_a_cache_lacking_a_metadata_field_is_rebuilt(tmp_path, field):
    path = tmp_path / "c.npz"
    cache.write_cache(path, small_data(), "fp")
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays.pop("meta")))
    del meta[field]
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    assert cache.read_cache(path, "fp") is None


@pytest.mark.parametrize(("field", "value"), [("mean", [1.0, 2.0]), ("std", "abc"), ("crc32", 5), ("classes", 3)])
def test_a_cache_with_a_malformed_metadata_field_is_rebuilt(tmp_path, field, value):
    path = tmp_path / "c.npz"
    cache.write_cache(path, small_data(), "fp")
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays.pop("meta")))
    meta[field] = value
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    assert cache.read_cache(path, "fp") is None


def test_a_cache_whose_metadata_is_not_a_mapping_is_rebuilt(tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, meta=np.array(json.dumps([1, 2])))
    assert cache.read_cache(path, "fp") is None


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_the_cache_keeps_the_umask(tmp_path, umask):
    path = tmp_path / "c.npz"
    old = os.umask(umask)
    try:
        cache.write_cache(path, small_data(), "fp")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert cache.read_cache(path, "fp") is not None
