"""CIFAR-10 sources, decoding, and the uint8 NHWC cache.

A source is decoded once into a cache file (~11 s for the JPEG archive on 2 cores); every later run
loads that file (0.1-0.9 s for the 184 MB of uint8 pixels, train + test, warm or cold page cache)
instead of touching JPEGs or pickles again.

Sources, in the order :func:`resolve_source` tries them:

1. ``root`` passed by the caller (a config's ``data.root``), else the ``FASTTRICK_DATA`` variable.
   It may name a directory or an archive (.tar, .tar.gz/.tgz, .tar.xz) holding either
   torchvision's ``cifar-10-batches-py/`` (or its ``cifar-10-python.tar.gz``) or an image folder
   ``train/<class>/*``, ``test/<class>/*``. A directory may also hold exactly one such archive.
2. Nothing configured: torchvision downloads ``cifar-10-python.tar.gz`` into the user cache.

The cache lives in ``$FASTTRICK_CACHE`` (default ``~/.cache/fasttrick``), one ``.npz`` per source
path. It records a fingerprint of the source (sizes and mtimes) and a CRC32 of every array, so an
edited source (stale) or a damaged file (corrupt) is noticed and the cache rebuilt from the source.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import lzma
import os
import pickle
import tarfile
import tempfile
import urllib.error
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

NUM_CLASSES = 10
NUM_TRAIN = 50_000
NUM_TEST = 10_000
IMAGE_SHAPE = (32, 32, 3)  # HWC

DATA_ENV = "FASTTRICK_DATA"
CACHE_ENV = "FASTTRICK_CACHE"

# Bump when the cache layout changes; older files are then stale and rebuilt.
CACHE_FORMAT = 1

_BATCHES_DIR = "cifar-10-batches-py"
_PYTHON_ARCHIVE = "cifar-10-python.tar.gz"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz")

_LAYOUTS = (
    "  - an image folder: train/<class>/*.jpg|png and test/<class>/*.jpg|png (10 class folders each),\n"
    f"  - torchvision's {_BATCHES_DIR}/ folder or its {_PYTHON_ARCHIVE},\n"
    "  - or one .tar / .tar.gz / .tar.xz archive of either."
)


class DataSourceError(RuntimeError):
    """A CIFAR-10 source is missing, damaged, or laid out wrongly; the message says where and what to do."""


@dataclass(frozen=True)
class Cifar10:
    """CIFAR-10 held once in host memory: uint8 NHWC images and int64 labels.

    ``mean`` and ``std`` are the per-channel statistics of the training images in pixel units
    (0..255), so normalising with them gives zero mean, unit variance on this very source (a JPEG
    copy's statistics differ slightly from the original pickles').
    """

    train_images: np.ndarray  # (N_train, 32, 32, 3) uint8
    train_labels: np.ndarray  # (N_train,) int64
    test_images: np.ndarray  # (N_test, 32, 32, 3) uint8
    test_labels: np.ndarray  # (N_test,) int64
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str

    @classmethod
    def from_arrays(cls, train_images, train_labels, test_images, test_labels, classes, source) -> Cifar10:
        mean, std = channel_stats(train_images)
        return cls(
            train_images=np.ascontiguousarray(train_images, dtype=np.uint8),
            train_labels=np.ascontiguousarray(train_labels, dtype=np.int64),
            test_images=np.ascontiguousarray(test_images, dtype=np.uint8),
            test_labels=np.ascontiguousarray(test_labels, dtype=np.int64),
            classes=tuple(classes),
            mean=mean,
            std=std,
            source=str(source),
        )

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name == "train":
            return self.train_images, self.train_labels
        if name == "test":
            return self.test_images, self.test_labels
        raise ValueError(f"split must be 'train' or 'test', got {name!r}")

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.train_images, self.train_labels, self.test_images, self.test_labels))


def channel_stats(images: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std of uint8 NHWC images, in pixel units.

    From a 256-bin histogram per channel: exact, ~1.2 s for the 153.6 MB training set on 2 cores, and
    no float64 copy (8x the data) of the pixels. Runs once, when the cache is built.
    """
    pixels = images.reshape(-1, images.shape[-1])
    values = np.arange(256.0)
    mean, std = [], []
    for channel in range(pixels.shape[1]):
        histogram = np.bincount(pixels[:, channel], minlength=256) / len(pixels)
        mean.append(float(histogram @ values))
        std.append(float(np.sqrt(histogram @ (values - mean[-1]) ** 2)))
    return tuple(mean), tuple(std)


# --------------------------------------------------------------------------------------------
# Where to look
# --------------------------------------------------------------------------------------------


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fasttrick").expanduser()


@dataclass(frozen=True)
class Source:
    path: Path
    origin: str  # how it was chosen, for messages: "root argument", "FASTTRICK_DATA", "torchvision download"


def resolve_source(root: str | os.PathLike | None = None) -> Source | None:
    """The configured source, or None when nothing is configured (caller falls back to a download)."""
    if root is not None and str(root) != "":
        origin = "root argument"
    elif os.environ.get(DATA_ENV):
        root, origin = os.environ[DATA_ENV], DATA_ENV
    else:
        return None
    path = Path(root).expanduser().absolute()
    if not path.exists():
        raise DataSourceError(
            f"CIFAR-10 source {path} (from {origin}) does not exist.\n"
            f"Point {DATA_ENV} (or the config's data.root) at a directory or archive holding\n{_LAYOUTS}\n"
            f"or unset it to let torchvision download CIFAR-10 into {cache_root()}."
        )
    return Source(path, origin)


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(_ARCHIVE_SUFFIXES)


def _locate(source: Source) -> tuple[str, Path]:
    """(kind, path) of the CIFAR-10 copy inside a source; kind is 'batches', 'folder' or 'archive'."""
    path = source.path
    if path.is_file():
        if not _is_archive(path):
            raise DataSourceError(
                f"CIFAR-10 source {path} (from {source.origin}) is a file but not a .tar/.tar.gz/.tar.xz archive.\n"
                f"Point it at a directory or archive holding\n{_LAYOUTS}"
            )
        return "archive", path
    if (path / "train").is_dir() and (path / "test").is_dir():
        return "folder", path
    if (path / _TRAIN_BATCHES[0]).is_file():
        return "batches", path
    if (path / _BATCHES_DIR / _TRAIN_BATCHES[0]).is_file():
        return "batches", path / _BATCHES_DIR
    if (path / _PYTHON_ARCHIVE).is_file():
        return "archive", path / _PYTHON_ARCHIVE
    archives = sorted(p for p in path.iterdir() if _is_archive(p))
    if len(archives) == 1:
        return "archive", archives[0]
    found = sorted(p.name for p in path.iterdir())
    shown = ", ".join(found[:12]) + (f", ... ({len(found)} entries)" if len(found) > 12 else "") or "nothing"
    why = f"it holds several archives ({', '.join(a.name for a in archives)}); name one" if archives else ""
    raise DataSourceError(
        f"No CIFAR-10 found in {path} (from {source.origin}){': ' + why if why else ''}.\n"
        f"Found there: {shown}.\nExpected one of\n{_LAYOUTS}\n"
        f"Point {DATA_ENV} (or data.root) at such a directory or archive."
    )


def _fingerprint(kind: str, path: Path) -> str:
    """Cheap identity of a source's contents: sizes and mtimes, no hashing of the data itself.

    For folders the class directories' mtimes change whenever a file is added, removed or
    renamed in them; an image edited in place is not noticed (hashing 60k files on every load
    would cost more than the cache load itself).
    """
    stats = [path.stat()]
    if kind == "folder":
        stats += [d.stat() for split in ("train", "test") for d in sorted((path / split).iterdir()) if d.is_dir()]
    elif kind == "batches":
        stats += [(path / name).stat() for name in (*_TRAIN_BATCHES, _TEST_BATCH) if (path / name).exists()]
    return hashlib.sha1(repr([(s.st_size, s.st_mtime_ns) for s in stats]).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def _decode_image(data: bytes, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataSourceError(f"{name} is not a readable image ({err}).") from err
    if pixels.shape != IMAGE_SHAPE:
        raise DataSourceError(f"{name} is {pixels.shape[1]}x{pixels.shape[0]}; CIFAR-10 images are 32x32.")
    return pixels


def _decode_folder_files(files: dict[tuple[str, str], list[tuple[str, bytes]]], where: str) -> Cifar10:
    """files: (split, class) -> [(name, encoded bytes)]. Classes are indexed in sorted order, as torchvision's
    ImageFolder does (for CIFAR-10 that is also the canonical airplane..truck order)."""
    classes = {split: sorted(c for s, c in files if s == split) for split in ("train", "test")}
    if classes["train"] != classes["test"]:
        differ = ", ".join(sorted(set(classes["train"]) ^ set(classes["test"])))
        raise DataSourceError(
            f"Image folder {where}: train/ and test/ have different class folders (only in one: {differ}).\n"
            f"CIFAR-10 needs the same {NUM_CLASSES} class folders in both; expected\n{_LAYOUTS}"
        )
    if len(classes["train"]) != NUM_CLASSES:
        raise DataSourceError(
            f"Image folder {where} has {len(classes['train'])} class folders ({', '.join(classes['train'])}); "
            f"CIFAR-10 has {NUM_CLASSES}.\nExpected\n{_LAYOUTS}"
        )
    arrays = {}
    for split in ("train", "test"):
        images, labels = [], []
        for label, name in enumerate(classes[split]):
            for file_name, data in sorted(files[split, name]):
                images.append(_decode_image(data, f"{where}: {file_name}"))
                labels.append(label)
        arrays[split] = (np.stack(images), np.asarray(labels, dtype=np.int64))
    return Cifar10.from_arrays(*arrays["train"], *arrays["test"], classes["train"], where)


def _folder_files_on_disk(root: Path) -> dict[tuple[str, str], list[tuple[str, bytes]]]:
    files: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    for split in ("train", "test"):
        for class_dir in (root / split).iterdir():
            if class_dir.is_dir():
                files[split, class_dir.name] = [
                    (str(p.relative_to(root)), p.read_bytes()) for p in class_dir.iterdir() if p.is_file()
                ]
    return files


def _unpickle(data: bytes, name: str) -> dict:
    try:
        return pickle.loads(data, encoding="bytes")
    except Exception as err:  # a damaged pickle raises anything from UnpicklingError to MemoryError
        raise DataSourceError(f"{name} is damaged ({type(err).__name__}: {err}).") from err


def _decode_batches(read: dict[str, bytes], where: str) -> Cifar10:
    """read: batch name -> pickled bytes, torchvision's python layout (rows of 3072 = planar CHW)."""
    missing = [n for n in (*_TRAIN_BATCHES, _TEST_BATCH) if n not in read]
    if missing:
        raise DataSourceError(
            f"{where} lacks {', '.join(missing)}; a complete {_BATCHES_DIR}/ holds data_batch_1..5 and test_batch.\n"
            f"Re-extract {_PYTHON_ARCHIVE} or point {DATA_ENV} at an intact copy."
        )

    def load(names):
        batches = [_unpickle(read[n], f"{where}/{n}") for n in names]
        planar = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
        return planar.transpose(0, 2, 3, 1), np.concatenate([b[b"labels"] for b in batches])

    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    if "batches.meta" in read:
        classes = tuple(n.decode() for n in _unpickle(read["batches.meta"], f"{where}/batches.meta")[b"label_names"])
    return Cifar10.from_arrays(*load(_TRAIN_BATCHES), *load([_TEST_BATCH]), classes, where)


def _decode_archive(path: Path, origin: str) -> Cifar10:
    """Read every member in one streaming pass ("r|*": xz cannot seek cheaply), then decide the layout
    from the member names. The JPEG archive (18.6 MB) reads in ~2.5 s here; PIL decodes its 60 000
    images in ~5 s more (threads do not help: PIL's header parsing holds the GIL)."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                if member.isfile():
                    members[member.name] = archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as err:
        raise _damaged_archive(path, origin, err) from err

    batches = {name.rsplit("/", 1)[-1]: data for name, data in members.items() if f"{_BATCHES_DIR}/" in name}
    if batches:
        return _decode_batches(batches, f"{path}:{_BATCHES_DIR}")
    files: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    for name, data in members.items():
        parts = name.split("/")
        # train/<class>/<file>, possibly below one top-level folder (cifar10/train/<class>/<file>).
        if len(parts) >= 3 and parts[-3] in ("train", "test"):
            files.setdefault((parts[-3], parts[-2]), []).append((name, data))
    if not files:
        shown = ", ".join(sorted(members)[:8]) or "no files"
        raise DataSourceError(
            f"Archive {path} (from {origin}) holds no CIFAR-10 layout (its files start: {shown}).\nExpected\n{_LAYOUTS}"
        )
    return _decode_folder_files(files, str(path))


def _damaged_archive(path: Path, origin: str, err: Exception) -> DataSourceError:
    return DataSourceError(
        f"Could not read archive {path} (from {origin}): {type(err).__name__}: {err}.\n"
        "The file is damaged or truncated; download it again, or point "
        f"{DATA_ENV} at an intact copy or at an extracted folder."
    )


def decode_source(source: Source) -> Cifar10:
    """Decode a source into uint8 arrays (no count checks; :func:`verify` does those)."""
    kind, path = _locate(source)
    log.info("decoding CIFAR-10 from %s (%s, once; later runs read the cache)", path, kind)
    if kind == "archive":
        return _decode_archive(path, source.origin)
    if kind == "folder":
        return _decode_folder_files(_folder_files_on_disk(path), str(path))
    read = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    return _decode_batches(read, str(path))


def verify(data: Cifar10) -> None:
    """Raise DataSourceError unless ``data`` is complete CIFAR-10: 50 000 / 10 000 images, 32x32x3, 10 classes."""
    problems = []
    for split, images, labels, expected in (
        ("training", data.train_images, data.train_labels, NUM_TRAIN),
        ("test", data.test_images, data.test_labels, NUM_TEST),
    ):
        if len(images) != expected or len(labels) != expected:
            problems.append(f"{len(images):,} {split} images and {len(labels):,} labels (CIFAR-10 has {expected:,})")
        if images.shape[1:] != IMAGE_SHAPE or images.dtype != np.uint8:
            problems.append(f"{split} images of shape {images.shape[1:]} {images.dtype} (expected 32x32x3 uint8)")
        present = np.unique(labels)
        if len(present) != NUM_CLASSES or present.min() != 0 or present.max() != NUM_CLASSES - 1:
            problems.append(f"{split} labels {present.tolist()[:12]} (expected each of 0..9)")
    if len(data.classes) != NUM_CLASSES:
        problems.append(f"{len(data.classes)} class names (expected 10)")
    if problems:
        raise DataSourceError(
            f"{data.source} is not complete CIFAR-10: it holds " + "; ".join(problems) + ".\n"
            f"Point {DATA_ENV} at the full data set, laid out as\n{_LAYOUTS}"
        )


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------

_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def cache_path(source_path: Path, cache_dir: Path) -> Path:
    return cache_dir / f"cifar10-uint8-{hashlib.sha1(str(source_path).encode()).hexdigest()[:12]}.npz"


def write_cache(path: Path, data: Cifar10, fingerprint: str) -> None:
    """Write atomically: a temp file in the same folder, fsync, rename. Concurrent writers (grid workers
    preparing at once) each rename a complete file; readers never see a partial one."""
    meta = {
        "format": CACHE_FORMAT,
        "fingerprint": fingerprint,
        "classes": list(data.classes),
        "mean": data.mean,
        "std": data.std,
        "source": data.source,
        "crc32": {name: zlib.crc32(getattr(data, name)) for name in _ARRAYS},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as tmp:
        try:
            # Uncompressed: uint8 pixels barely compress and zlib would make loads ~10x slower.
            np.savez(tmp, meta=np.array(json.dumps(meta)), **{name: getattr(data, name) for name in _ARRAYS})
            tmp.flush()
            os.fsync(tmp.fileno())
            os.chmod(tmp.name, 0o644)  # NamedTemporaryFile makes 0600; the cache is shareable like any download
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)


def read_cache(path: Path, fingerprint: str) -> Cifar10 | None:
    """The cached data, or None (with the reason logged) if the file is missing, stale or corrupt."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            if meta.get("format") != CACHE_FORMAT or meta.get("fingerprint") != fingerprint:
                log.warning("CIFAR-10 cache %s is stale (source changed or older format); rebuilding", path)
                return None
            arrays = {name: npz[name] for name in _ARRAYS}
    except Exception as err:  # zipfile, json, numpy and OS errors all mean: unreadable, rebuild
        log.warning("CIFAR-10 cache %s is unreadable (%s: %s); rebuilding", path, type(err).__name__, err)
        return None
    # CRC32 of 184 MB costs ~0.05 s: cheap insurance against silently training on flipped bits.
    bad = [name for name, array in arrays.items() if zlib.crc32(array) != meta["crc32"][name]]
    if bad:
        log.warning("CIFAR-10 cache %s is corrupt (checksum mismatch in %s); rebuilding", path, ", ".join(bad))
        return None
    return Cifar10(
        **arrays,
        classes=tuple(meta["classes"]),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        source=meta["source"],
    )


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def _download(cache_dir: Path) -> Source:
    """torchvision's download of the original python batches into the user cache (used when nothing is configured)."""
    target = cache_dir / "torchvision"
    if (target / _BATCHES_DIR / _TEST_BATCH).is_file():
        return Source(target / _BATCHES_DIR, "torchvision download")
    advice = (
        f"Set {DATA_ENV} to a directory or archive holding\n{_LAYOUTS}\n"
        f"or put torchvision's {_BATCHES_DIR}/ into {target}."
    )
    try:
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import download_and_extract_archive
    except ImportError as err:
        raise DataSourceError(
            f"No CIFAR-10 source configured ({DATA_ENV} unset, no data.root) and torchvision, which would "
            f"download it, is not installed ({err}).\n{advice}"
        ) from err
    log.warning("no CIFAR-10 source configured; downloading %s into %s", CIFAR10.url, target)
    try:
        download_and_extract_archive(CIFAR10.url, str(target), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
    except (urllib.error.URLError, OSError) as err:
        raise DataSourceError(
            f"No CIFAR-10 source configured ({DATA_ENV} unset, no data.root), nothing in {target}, and the "
            f"download from {CIFAR10.url} failed ({type(err).__name__}: {err}); offline?\n{advice}"
        ) from err
    except RuntimeError as err:  # torchvision's md5 check
        raise DataSourceError(
            f"The CIFAR-10 download into {target} is damaged ({err}); delete {target} and retry.\n{advice}"
        ) from err
    return Source(target / _BATCHES_DIR, "torchvision download")


def load_cifar10(
    root: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None, rebuild: bool = False
) -> Cifar10:
    """CIFAR-10 as uint8 arrays, from the cache when it is fresh, else decoded from the source and cached.

    ``root`` overrides ``FASTTRICK_DATA``; ``cache_dir`` overrides ``FASTTRICK_CACHE``; ``rebuild``
    ignores an existing cache. Raises :class:`DataSourceError` with the place looked at and the fix.
    """
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    source = resolve_source(root) or _download(cache_dir)
    kind, located = _locate(source)
    path = cache_path(located, cache_dir)
    fingerprint = _fingerprint(kind, located)
    data = None if rebuild else read_cache(path, fingerprint)
    reread = not rebuild  # under the lock below: another process may have built it meanwhile
    if data is not None:
        try:
            verify(data)
        except DataSourceError as err:
            log.warning("CIFAR-10 cache %s fails verification; rebuilding. %s", path, err)
            data, reread = None, False
    if data is None:
        # Grid workers starting at once would each decode the source (~11 s on 2 cores, all cores busy):
        # the first builds the cache under this lock, the others wait for it and then read it. The lock
        # file lives in the temp folder: the cache folder holds caches only.
        from filelock import FileLock  # a dependency of torch

        key = hashlib.sha256(str(path.absolute()).encode()).hexdigest()[:16]
        with FileLock(Path(tempfile.gettempdir()) / f"fasttrick-cache-{key}.lock"):
            data = read_cache(path, fingerprint) if reread else None
            if data is None:
                data = decode_source(source)
                verify(data)
                write_cache(path, data, fingerprint)
                log.info("cached CIFAR-10 (%d MB uint8) at %s", data.nbytes >> 20, path)
    return data
