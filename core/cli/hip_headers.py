"""``dsport hip-headers``: assemble the header-only ROCm tree (HIP headers and
ocml/ockl bitcode from a pinned, hash-checked PyPI wheel) that the tilelang
backend's gfx builds compile against when no ROCm is installed. ``make``
runs it when it installs the tilelang extra."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dest", type=Path, default=None, help="where the tree goes (default: share/dsport/rocm in this environment)")


def run(args: argparse.Namespace) -> int:
    from ...backends.tilelang.hip import DEFAULT_TREE, HEADERS_WHEEL, install

    tree = install(args.dest or DEFAULT_TREE)
    print(f"HIP {tree.version_str} headers from {HEADERS_WHEEL} at {tree.root}")
    return 0
