"""Typed errors. Every message names the op (or config key), the argument,
what was expected and what was given, so a user never has to guess."""
from __future__ import annotations

from typing import Any


class DsportError(Exception):
    """Base class of every error dsport raises on purpose."""


class ValidationError(DsportError, ValueError):
    """An op was called with an argument that breaks its spec."""

    def __init__(self, op: str, arg: str, expected: str, got: Any):
        self.op, self.arg, self.expected, self.got = op, arg, expected, got
        super().__init__(f"{op}: argument '{arg}': expected {expected}, got {got}")


class ConfigError(DsportError, ValueError):
    """A configuration (YAML, CLI flag, environment) is invalid."""


class BackendUnavailable(DsportError, RuntimeError):
    """A backend was requested that cannot run here; the message says why."""


class ResolveError(DsportError, LookupError):
    """No implementation can serve an op under the requested policy."""
