"""The ``dsport`` command. Each subcommand lives in its own module exposing
``add_arguments(parser)`` and ``run(args) -> int``; this file only lists them."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "backends": ("dsport.core.cli.backends", "list backends, their availability and why"),
    "ops": ("dsport.core.cli.ops", "the op catalogue, printed from the op specs"),
    "bench": ("dsport.core.cli.bench", "run one benchmark (ratios measured in one run)"),
    "conformance": ("dsport.core.cli.conformance", "check backends against the float64 reference, case by case; 'merge' joins reports"),
    "profile": ("dsport.core.cli.profile", "per-op time, FLOP/s, GB/s and share of the roofline per backend, behind an accuracy gate; decoder-layer cost per context"),
    "build": ("dsport.core.cli.build", "compile a backend's kernels ahead of time for a target and report resources"),
    "hip-headers": ("dsport.core.cli.hip_headers", "assemble the header-only ROCm tree the TileLang AMD builds compile against (HIP headers from a pinned PyPI wheel)"),
    "export-onnx": ("dsport.core.cli.export_onnx", "write the V3.2 prefill graph or a decode step as ONNX (dsport ops as local functions, FP8 initializers) and match it against torch"),
    "make-checkpoint": ("dsport.core.cli.make_checkpoint", "write a small random checkpoint in the Hugging Face V3.2 format"),
    "plan": ("dsport.core.cli.plan", "per-rank memory of a deployment (weights, caches, activations) for tensor/expert parallel degrees, and whether it fits an accelerator"),
    "new-backend": ("dsport.core.cli.new_backend", "write a ready-to-edit backend package (op table, capabilities, entry point, conformance test)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dsport", description="DeepSeek-V3.2 operator portability layer")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module, help_) in SUBCOMMANDS.items():
        mod = importlib.import_module(module)
        mod.add_arguments(sub.add_parser(name, help=help_, description=help_))
        modules[name] = mod
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
