"""Test-only: a backend whose available() raises instead of answering."""
from dsport.backends import reference

NAME = "available_raises"
OPS = {"dequant": reference.OPS["dequant"]}


def available() -> tuple[bool, str]:
    raise RuntimeError("probe of the device driver failed")
