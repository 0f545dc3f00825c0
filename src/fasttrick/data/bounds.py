"""What a CIFAR-10 source may hold, checked from names and sizes before any content is read.

A 300 KB .tar.xz can hold a 2 GiB member of zeros, and a data folder can hold any file: reading
first and checking afterwards costs the memory before the refusal comes. So every archive member
and every file of a folder is classed by its name (a python batch, an image of the image-folder
layout, or something else), and its size, the running count and the running total are checked
against the limits below before its bytes are read. Each limit is several times what the real
data set needs, and a refusal names the member, the limit, and what to do.
"""

from __future__ import annotations

from typing import NoReturn

from .cifar import BATCHES_DIR, DATA_ENV, LAYOUTS, TEST_BATCH, TRAIN_BATCHES, DataSourceError

# A python batch is 10 000 x 3072 pixel bytes plus labels and file names: 31.0 MB.
MAX_BATCH_BYTES = 64 << 20
# A 32x32 image: ~1-3 KB as JPEG or PNG, 3 KB raw; 1 MiB leaves room for any metadata.
MAX_IMAGE_BYTES = 1 << 20
# Other members (a README, a licence, .DS_Store) are skipped, but skipping still decompresses them.
MAX_OTHER_BYTES = 1 << 20
# The image folder has 60 000 files and 22 folders.
MAX_MEMBERS = 100_000
# Bytes read (kept in memory until decoded): the python batches are 186 MB, the PNG folder ~150 MB.
MAX_READ_BYTES = 512 << 20
# Bytes decompressed in all, read or skipped: bounds the time an archive of junk takes to refuse.
MAX_TOTAL_BYTES = 1 << 30

BATCH_NAMES = frozenset((*TRAIN_BATCHES, TEST_BATCH, "batches.meta"))

_LIMITS = {"batch": MAX_BATCH_BYTES, "image": MAX_IMAGE_BYTES, "other": MAX_OTHER_BYTES}


def member_kind(name: str) -> str:
    """'batch' (a file of cifar-10-batches-py/), 'image' (train|test/<class>/<file>) or 'other'."""
    parts = name.strip("/").split("/")
    if parts[-1] in BATCH_NAMES and (len(parts) == 1 or parts[-2] == BATCHES_DIR):
        return "batch"
    # train/<class>/<file>, possibly below one or more top-level folders (cifar10/train/<class>/<file>).
    if len(parts) >= 3 and parts[-3] in ("train", "test") and not parts[-1].startswith("."):
        return "image"
    return "other"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


class Budget:
    """The running count and totals of one source; :meth:`admit` checks a member before it is read."""

    def __init__(self, where: str):
        self.where = where
        self.members = 0
        self.read = 0
        self.total = 0

    def admit(self, name: str, size: int) -> str:
        """The member's kind; raises DataSourceError if reading (or skipping) it would pass a limit."""
        kind = member_kind(name)
        self.members += 1
        self.total += size
        if size > _LIMITS[kind]:
            what = {"batch": "a CIFAR-10 python batch", "image": "a 32x32 image", "other": "a file CIFAR-10 lacks"}
            self.refuse(f"{name} is {_mib(size)}, more than {_mib(_LIMITS[kind])} for {what[kind]}")
        if self.members > MAX_MEMBERS:
            self.refuse(f"it holds more than {MAX_MEMBERS:,} members (CIFAR-10's image folder has about 60 000)")
        if self.total > MAX_TOTAL_BYTES:
            self.refuse(f"its members pass {_mib(MAX_TOTAL_BYTES)} in all (CIFAR-10 is under 200 MiB)")
        if kind != "other":
            self.read += size
            if self.read > MAX_READ_BYTES:
                self.refuse(f"its CIFAR-10 files pass {_mib(MAX_READ_BYTES)} in all (CIFAR-10 is under 200 MiB)")
        return kind

    def refuse(self, why: str) -> NoReturn:
        raise DataSourceError(
            f"{self.where} is not CIFAR-10: {why}; refused before reading it.\n"
            f"Point {DATA_ENV} (or data.root) at CIFAR-10 itself, laid out as\n{LAYOUTS}"
        )
