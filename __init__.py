"""dsport: one backend-agnostic graph for DeepSeek-V3.2's operators (DSA, MLA,
MoE), dispatched to per-hardware op tables and checked against a float
reference.

    >>> import dsport
    >>> ops = dsport.resolve("reference")
    >>> y, s = ops.act_quant(x, block=128, fmt="e4m3fn", scale_fmt="ue8m0")
"""
from dsport.core.errors import BackendUnavailable, ConfigError, DsportError, ResolveError, ValidationError
from dsport.core.fp8 import E4M3FN, E4M3FNUZ, FP32, UE8M0, Fp8Format, ScaleFormat
from dsport.core.registry import OpTable, resolve
from dsport.core.spec import OpSpec, get_spec, specs

__version__ = "0.1.0"
__all__ = [
    "resolve", "OpTable", "specs", "get_spec", "OpSpec",
    "Fp8Format", "ScaleFormat", "E4M3FN", "E4M3FNUZ", "FP32", "UE8M0",
    "DsportError", "ValidationError", "ConfigError", "BackendUnavailable", "ResolveError",
]
