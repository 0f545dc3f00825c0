"""Decoding a CIFAR-10 source into uint8 arrays: an image folder (PIL), torchvision's python batches, or
an archive of either.

The python batches are pickles, and a plain ``pickle.loads`` runs whatever a crafted file names: they
are read by :class:`BatchUnpickler`, which admits only what CIFAR-10's batches hold (dicts, lists,
bytes, numbers and numpy uint8 arrays) and refuses every other global, so a data folder cannot run code.
"""

from __future__ import annotations

import io
import lzma
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .bounds import BATCH_NAMES, MAX_OTHER_BYTES, Budget, member_kind
from .cifar import (
    BATCHES_DIR,
    DATA_ENV,
    IMAGE_SHAPE,
    LAYOUTS,
    NUM_CLASSES,
    PYTHON_ARCHIVE,
    TEST_BATCH,
    TRAIN_BATCHES,
    Cifar10,
    DataSourceError,
)

# The globals a CIFAR-10 batch pickle names: numpy's array reconstructors (the original files, written by
# Python 2 numpy, use multiarray._reconstruct; numpy 2 renamed numpy.core to numpy._core, and pickles
# with protocol 5 use _frombuffer), the array type and its dtype, and _codecs.encode, which Python 3
# protocol-2 pickles call to rebuild bytes from text. Each only builds data; nothing else is looked up.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class BatchUnpickler(pickle.Unpickler):
    """An Unpickler for CIFAR-10 python batches that refuses any global but numpy's array types."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"it names {module}.{name}, which a CIFAR-10 batch does not hold (refused, not run)"
        )


def _decode_image(data: bytes, name: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            # The header's size, before any pixel is decoded: a 1 KB PNG may declare 50 000 x 50 000 pixels.
            if image.size != IMAGE_SHAPE[1::-1]:
                raise DataSourceError(f"{name} is {image.size[0]}x{image.size[1]}; CIFAR-10 images are 32x32.")
            pixels = np.asarray(image.convert("RGB"))
    except Image.DecompressionBombError as err:  # PIL refuses to open headers declaring > 179 M pixels
        raise DataSourceError(f"{name} declares a huge image ({err}); CIFAR-10 images are 32x32.") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataSourceError(f"{name} is not a readable image ({err}).") from err
    return pixels


def decode_folder_files(files: dict[tuple[str, str], list[tuple[str, bytes]]], where: str) -> Cifar10:
    """files: (split, class) -> [(name, encoded bytes)]. Classes are indexed in sorted order, as torchvision's
    ImageFolder does (for CIFAR-10 that is also the canonical airplane..truck order)."""
    classes = {split: sorted(c for s, c in files if s == split) for split in ("train", "test")}
    if classes["train"] != classes["test"]:
        differ = ", ".join(sorted(set(classes["train"]) ^ set(classes["test"])))
        raise DataSourceError(
            f"Image folder {where}: train/ and test/ have different class folders (only in one: {differ}).\n"
            f"CIFAR-10 needs the same {NUM_CLASSES} class folders in both; expected\n{LAYOUTS}"
        )
    if len(classes["train"]) != NUM_CLASSES:
        raise DataSourceError(
            f"Image folder {where} has {len(classes['train'])} class folders ({', '.join(classes['train'])}); "
            f"CIFAR-10 has {NUM_CLASSES}.\nExpected\n{LAYOUTS}"
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


def folder_files_on_disk(root: Path) -> dict[tuple[str, str], list[tuple[str, bytes]]]:
    """(split, class) -> [(name, bytes)] of an image folder; each file's size is checked before it is read."""
    budget = Budget(f"Image folder {root}")
    files: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    for split in ("train", "test"):
        for class_dir in (root / split).iterdir():
            if class_dir.is_dir():
                kept = files[split, class_dir.name] = []
                for p in class_dir.iterdir():
                    name = str(p.relative_to(root))
                    if p.is_file() and budget.admit(name, p.stat().st_size) == "image":
                        kept.append((name, p.read_bytes()))
    return files


def batch_files_on_disk(folder: Path) -> dict[str, bytes]:
    """name -> bytes of the python batches in ``folder``, each file's size checked before it is read
    (other files there are not read)."""
    budget = Budget(f"{folder}")
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.name in BATCH_NAMES and p.is_file() and budget.admit(p.name, p.stat().st_size)
    }


def _unpickle(data: bytes, name: str) -> dict:
    try:
        batch = BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:  # a damaged pickle raises anything from UnpicklingError to MemoryError
        raise DataSourceError(f"{name} is damaged or not a CIFAR-10 batch ({type(err).__name__}: {err}).") from err
    if not isinstance(batch, dict):
        raise DataSourceError(f"{name} is not a CIFAR-10 batch (a {type(batch).__name__}, not a dict).")
    return batch


def decode_batches(read: dict[str, bytes], where: str) -> Cifar10:
    """read: batch name -> pickled bytes, torchvision's python layout (rows of 3072 = planar CHW)."""
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if n not in read]
    if missing:
        raise DataSourceError(
            f"{where} lacks {', '.join(missing)}; a complete {BATCHES_DIR}/ holds data_batch_1..5 and test_batch.\n"
            f"Re-extract {PYTHON_ARCHIVE} or point {DATA_ENV} at an intact copy."
        )

    def load(names):
        batches = [_unpickle(read[n], f"{where}/{n}") for n in names]
        planar = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
        return planar.transpose(0, 2, 3, 1), np.concatenate([b[b"labels"] for b in batches])

    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    if "batches.meta" in read:
        classes = tuple(n.decode() for n in _unpickle(read["batches.meta"], f"{where}/batches.meta")[b"label_names"])
    train_images, train_labels = load(TRAIN_BATCHES)
    test_images, test_labels = load([TEST_BATCH])
    return Cifar10.from_arrays(train_images, train_labels, test_images, test_labels, classes, where)


class _UnboundedHeader(Exception):
    """A tar header that tarfile would read into memory without a bound; the message says which."""


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar header whose parts that tarfile reads whole into memory before it yields the member are
    bounded like any member: extended headers (pax records, GNU long names) by size, and the maps of
    sparse members (a chain of extension blocks, or a GNU 1.0 map of any length) are refused: CIFAR-10's
    files have no holes."""

    def _proc_member(self, archive):
        if self.type in _EXTENDED_HEADERS and self.size > MAX_OTHER_BYTES:
            raise _UnboundedHeader(f"a tar extended header of {self.size:,} bytes (at most {MAX_OTHER_BYTES:,})")
        if self.type == tarfile.GNUTYPE_SPARSE and self._sparse_structs[1]:
            raise _UnboundedHeader(f"{self.name}, a sparse file with a chain of hole maps")
        return super()._proc_member(archive)

    def _proc_gnusparse_10(self, next, pax_headers, archive):
        name = pax_headers.get("GNU.sparse.name", next.name)
        raise _UnboundedHeader(f"{name}, a sparse file with a hole map of unbounded size (GNU sparse 1.0)")


_EXTENDED_HEADERS = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


def read_archive(path: Path, origin: str) -> tuple[dict[str, bytes], list[str]]:
    """The CIFAR-10 files of an archive (name -> bytes) and the names of all its files, in one streaming
    pass ("r|*": xz cannot seek cheaply). Each member's name and size are checked (:class:`Budget`)
    from its header, before its bytes are read; members that are no CIFAR-10 file are skipped unread."""
    budget = Budget(f"Archive {path} (from {origin})")
    members: dict[str, bytes] = {}
    names: list[str] = []
    try:
        with tarfile.open(path, "r|*", tarinfo=_BoundedTarInfo) as archive:
            while (member := archive.next()) is not None:
                # Stream mode keeps every header read (an undeclared attribute); none is needed again.
                archive.members.clear()  # type: ignore[attr-defined]
                kind = budget.admit(member.name, member.size if member.isfile() else 0)
                if not member.isfile():
                    continue
                names.append(member.name)
                content = archive.extractfile(member) if kind != "other" else None
                if content is not None:
                    members[member.name] = content.read()
    except _UnboundedHeader as err:
        budget.refuse(f"it holds {err}")
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as err:
        raise _damaged_archive(path, origin, err) from err
    return members, names


def decode_archive(path: Path, origin: str) -> Cifar10:
    """Decode an archive of either layout, told apart by its member names. The JPEG archive (18.6 MB)
    reads in ~2.5 s here; PIL decodes its 60 000 images in ~5 s more (threads do not help: PIL's header
    parsing holds the GIL)."""
    members, names = read_archive(path, origin)
    batches = {name.rsplit("/", 1)[-1]: data for name, data in members.items() if f"{BATCHES_DIR}/" in name}
    if batches:
        return decode_batches(batches, f"{path}:{BATCHES_DIR}")
    files: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    for name, data in members.items():
        parts = name.split("/")
        if member_kind(name) == "image":
            files.setdefault((parts[-3], parts[-2]), []).append((name, data))
    if not files:
        shown = ", ".join(sorted(names)[:8]) or "no files"
        raise DataSourceError(
            f"Archive {path} (from {origin}) holds no CIFAR-10 layout (its files start: {shown}).\nExpected\n{LAYOUTS}"
        )
    return decode_folder_files(files, str(path))


def _damaged_archive(path: Path, origin: str, err: Exception) -> DataSourceError:
    return DataSourceError(
        f"Could not read archive {path} (from {origin}): {type(err).__name__}: {err}.\n"
        "The file is damaged or truncated; download it again, or point "
        f"{DATA_ENV} at an intact copy or at an extracted folder."
    )
