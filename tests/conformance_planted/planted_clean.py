"""The planted backend with every bug switched off: the control that must pass.
It also exercises the ENV attribute: the worker must set the variable before
importing the backend (as TRITON_INTERPRET=1 must be for Triton)."""
ENV = {"DSPORT_PLANTED_CLEAN": "1"}

from .planted_bugs import BUGGY, OPS, available  # noqa: E402,F401

NAME = "planted_clean"
DESCRIPTION = "test-only: the planted backend without its bugs"
if BUGGY:  # imported without ENV applied: refuse to pose as the clean control
    OPS = {}
