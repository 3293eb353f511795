"""Test-only: a backend whose OPS table names an op no spec knows (a typo of 'dequant')."""
from dsport.backends import reference

NAME = "stray_ops"
OPS = {"dequant": reference.OPS["dequant"], "dequantt": reference.OPS["dequant"]}


def available() -> tuple[bool, str]:
    return True, "test backend"
