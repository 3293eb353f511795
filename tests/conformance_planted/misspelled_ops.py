"""Test-only: a backend module whose op table is misspelled (``OPs``), so it serves nothing."""
from dsport.backends import reference

NAME = "misspelled_ops"
OPs = {"dequant": reference.OPS["dequant"]}


def available() -> tuple[bool, str]:
    return True, "test backend"
