"""``python -m fasttrick.data prepare [PATH] [--rebuild]``: decode CIFAR-10 into the cache ahead of training."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .sources import CACHE_ENV, DATA_ENV, DataSourceError, cache_root, load_cifar10


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fasttrick.data", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="decode a CIFAR-10 source into the uint8 cache")
    prepare.add_argument("path", nargs="?", help=f"directory or archive (default: ${DATA_ENV}, else download)")
    prepare.add_argument("--rebuild", action="store_true", help="decode again even if the cache is fresh")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    try:
        data = load_cifar10(args.path, rebuild=args.rebuild)
    except DataSourceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"CIFAR-10 ready in {time.perf_counter() - start:.1f} s: {len(data.train_images):,} train / "
        f"{len(data.test_images):,} test images, {data.nbytes / 1e6:.1f} MB uint8, from {data.source}\n"
        f"cache: {cache_root()} (${CACHE_ENV})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
