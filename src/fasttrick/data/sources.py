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
import logging
import os
import tempfile
import urllib.error
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_path, read_cache, write_cache
from .cifar import (
    ARCHIVE_SUFFIXES,
    BATCHES_DIR,
    CACHE_ENV,
    DATA_ENV,
    IMAGE_SHAPE,
    LAYOUTS,
    NUM_CLASSES,
    NUM_TEST,
    NUM_TRAIN,
    PYTHON_ARCHIVE,
    TEST_BATCH,
    TRAIN_BATCHES,
    Cifar10,
    DataSourceError,
    channel_stats,
    verify,
)
from .decode import batch_files_on_disk, decode_archive, decode_batches, decode_folder_files, folder_files_on_disk

__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "IMAGE_SHAPE",
    "NUM_CLASSES",
    "NUM_TEST",
    "NUM_TRAIN",
    "Cifar10",
    "DataSourceError",
    "Source",
    "cache_path",
    "cache_root",
    "channel_stats",
    "decode_source",
    "load_cifar10",
    "read_cache",
    "resolve_source",
    "verify",
    "write_cache",
]

log = logging.getLogger(__name__)

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
            f"Point {DATA_ENV} (or the config's data.root) at a directory or archive holding\n{LAYOUTS}\n"
            f"or unset it to let torchvision download CIFAR-10 into {cache_root()}."
        )
    return Source(path, origin)


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


def _locate(source: Source) -> tuple[str, Path]:
    """(kind, path) of the CIFAR-10 copy inside a source; kind is 'batches', 'folder' or 'archive'."""
    path = source.path
    if path.is_file():
        if not _is_archive(path):
            raise DataSourceError(
                f"CIFAR-10 source {path} (from {source.origin}) is a file but not a .tar/.tar.gz/.tar.xz archive.\n"
                f"Point it at a directory or archive holding\n{LAYOUTS}"
            )
        return "archive", path
    if (path / "train").is_dir() and (path / "test").is_dir():
        return "folder", path
    if (path / TRAIN_BATCHES[0]).is_file():
        return "batches", path
    if (path / BATCHES_DIR / TRAIN_BATCHES[0]).is_file():
        return "batches", path / BATCHES_DIR
    if (path / PYTHON_ARCHIVE).is_file():
        return "archive", path / PYTHON_ARCHIVE
    archives = sorted(p for p in path.iterdir() if _is_archive(p))
    if len(archives) == 1:
        return "archive", archives[0]
    found = sorted(p.name for p in path.iterdir())
    shown = ", ".join(found[:12]) + (f", ... ({len(found)} entries)" if len(found) > 12 else "") or "nothing"
    why = f"it holds several archives ({', '.join(a.name for a in archives)}); name one" if archives else ""
    raise DataSourceError(
        f"No CIFAR-10 found in {path} (from {source.origin}){': ' + why if why else ''}.\n"
        f"Found there: {shown}.\nExpected one of\n{LAYOUTS}\n"
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
        stats += [(path / name).stat() for name in (*TRAIN_BATCHES, TEST_BATCH) if (path / name).exists()]
    return hashlib.sha1(repr([(s.st_size, s.st_mtime_ns) for s in stats]).encode()).hexdigest()


def decode_source(source: Source) -> Cifar10:
    """Decode a source into uint8 arrays (no count checks; :func:`verify` does those)."""
    kind, path = _locate(source)
    log.info("decoding CIFAR-10 from %s (%s, once; later runs read the cache)", path, kind)
    if kind == "archive":
        return decode_archive(path, source.origin)
    if kind == "folder":
        return decode_folder_files(folder_files_on_disk(path), str(path))
    return decode_batches(batch_files_on_disk(path), str(path))


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def _download(cache_dir: Path) -> Source:
    """torchvision's download of the original python batches into the user cache (used when nothing is configured)."""
    target = cache_dir / "torchvision"
    if (target / BATCHES_DIR / TEST_BATCH).is_file():
        return Source(target / BATCHES_DIR, "torchvision download")
    advice = (
        f"Set {DATA_ENV} to a directory or archive holding\n{LAYOUTS}\n"
        f"or put torchvision's {BATCHES_DIR}/ into {target}."
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
    return Source(target / BATCHES_DIR, "torchvision download")


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
