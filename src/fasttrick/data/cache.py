"""The uint8 NHWC cache of a decoded source: one uncompressed ``.npz`` per source, with the source's
fingerprint and a CRC32 of every array, so a stale or damaged cache is noticed and rebuilt."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

from .cifar import CACHE_FORMAT, Cifar10

log = logging.getLogger(__name__)

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
            # NamedTemporaryFile makes 0600; the cache gets the mode any file the user creates gets.
            os.chmod(tmp.name, 0o666 & ~_umask())
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
            if (
                not isinstance(meta, dict)
                or meta.get("format") != CACHE_FORMAT
                or meta.get("fingerprint") != fingerprint
            ):
                log.warning("CIFAR-10 cache %s is stale (source changed or older format); rebuilding", path)
                return None
            arrays = {name: npz[name] for name in _ARRAYS}
        # CRC32 of 184 MB costs ~0.05 s: cheap insurance against silently training on flipped bits.
        bad = [name for name, array in arrays.items() if zlib.crc32(array) != meta["crc32"][name]]
        if bad:
            log.warning("CIFAR-10 cache %s is corrupt (checksum mismatch in %s); rebuilding", path, ", ".join(bad))
            return None
        mean, std = tuple(float(m) for m in meta["mean"]), tuple(float(s) for s in meta["std"])
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean {meta['mean']!r} and std {meta['std']!r} are not one number per channel")
        return Cifar10(
            **arrays,
            classes=tuple(str(c) for c in meta["classes"]),
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            source=str(meta["source"]),
        )
    except Exception as err:  # zipfile, json, numpy, OS errors and a field missing all mean: unusable, rebuild
        log.warning("CIFAR-10 cache %s is unreadable (%s: %s); rebuilding", path, type(err).__name__, err)
        return None


def _umask() -> int:
    """The process's umask. Linux shows it in /proc; elsewhere it can only be read by setting it (briefly)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
