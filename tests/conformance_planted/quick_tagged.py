"""Test-only: the reference's quantization ops posing as a slow backend that
declares a reduced quick set (QUICK_TAGS), as interpreted backends do."""
from dsport.backends import reference

NAME = "quick_tagged"
DESCRIPTION = "test-only: reference quant ops with QUICK_TAGS = ('tiny',)"
QUICK_TAGS = ("tiny",)
OPS = {op: reference.OPS[op] for op in ("act_quant", "dequant")}


def available() -> tuple[bool, str]:
    return True, "test backend"
