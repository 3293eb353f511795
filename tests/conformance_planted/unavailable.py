"""Test-only: a backend that is honestly unavailable here (no such device)."""
from dsport.backends import reference

NAME = "unavailable"
OPS = {"dequant": reference.OPS["dequant"]}


def available() -> tuple[bool, str]:
    return False, "no Frobnicator device on this machine"
