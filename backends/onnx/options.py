"""The onnx backend's options: the ``onnx:`` section of a config file (see ``OPTIONS`` in the backend contract).

Kept apart from :mod:`runtime` so the options can be checked (a config file
validated) where onnx or onnxruntime is not installed.
"""
from __future__ import annotations

from ...core.backend import Option

MIN_OPSET = 21
"""Saturating Cast to float8e4m3fn/float8e4m3fnuz exists from opset 19; blocked
DequantizeLinear and the FP8 types in every op used here from 21."""


def known_providers() -> list[str]:
    """Every execution provider name this onnxruntime knows (built in or not); none where it is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_all_providers())


OPTIONS: dict[str, Option] = {
    "opset": Option("int", 21, f"ONNX opset of every graph (lower than {MIN_OPSET} has no saturating FP8 Cast in every op used)",
                    minimum=MIN_OPSET, env="DSPORT_ONNX_OPSET"),
    "providers": Option("list[str]", ["CPUExecutionProvider"],
                        "ONNX Runtime execution providers, in order (one this onnxruntime build lacks makes `available()` say which)",
                        choices=known_providers, env="DSPORT_ONNX_PROVIDERS"),
    "threads": Option("int", 0, "ONNX Runtime intra-op threads per session; 0: torch's thread count", minimum=0,
                      env="DSPORT_ONNX_THREADS"),
}
