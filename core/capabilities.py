"""What a backend's implementation of an op can serve. A capability check
answers with human-readable reasons, never a bare boolean: an empty list
means "supported"."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .spec import DTYPE_GROUPS, OpSpec, Param, Tensor


@dataclass(frozen=True)
class Rule:
    """A limit over several dims at once (``align32(E / n_group) * n_group <= 2048``): ``holds`` gets the
    call's dims (symbolic dims and int params, as :meth:`dsport.core.spec.OpSpec.validate` binds them)."""

    text: str
    holds: Callable[[Mapping[str, int]], bool]
    needs: tuple[str, ...]  # the dims it reads: a query without one of them is not judged by it


@dataclass(frozen=True)
class Capability:
    """Limits of one implementation. ``None`` means "no limit"."""

    dtypes: tuple[torch.dtype, ...] | None = None   # float input dtypes accepted
    fp8_formats: tuple[str, ...] | None = None      # FP8 element formats (by name)
    scale_formats: tuple[str, ...] | None = None
    heads: tuple[int, ...] | None = None            # head counts H
    topk_multiple: int | None = None                # k must be a multiple of this
    topk_max: int | None = None
    topk_values: tuple[int, ...] | None = None      # exact k a kernel is built for (e.g. 2048)
    page_sizes: tuple[int, ...] | None = None       # KV-cache block sizes BS
    devices: tuple[str, ...] | None = None          # torch device types
    archs: tuple[str, ...] | None = None            # GPU archs the code is built for
    dim_max: Mapping[str, int] | None = None        # a dim or int param at most this (D <= 7168)
    dim_values: Mapping[str, tuple[int, ...]] | None = None  # the exact values a kernel is built for (DQK 576)
    params: Mapping[str, tuple[Any, ...]] | None = None      # allowed values of other params (score_func)
    rules: tuple[Rule, ...] = ()
    note: str = ""

    def reasons(self, query: Mapping[str, Any]) -> list[str]:
        """Why this implementation cannot serve ``query`` (see :func:`query_of`)."""
        out: list[str] = []

        def need(key: str, allowed: tuple | None, what: str) -> None:
            v = query.get(key)
            if allowed is not None and v is not None and v not in allowed:
                out.append(f"{what} {_name(v)} not in {[a if isinstance(a, int) else _name(a) for a in allowed]}")

        need("dtype", self.dtypes, "dtype")
        need("fp8_format", self.fp8_formats, "fp8 format")
        need("scale_format", self.scale_formats, "scale format")
        need("heads", self.heads, "head count")
        need("page_size", self.page_sizes, "page size")
        need("device", self.devices, "device")
        need("arch", self.archs, "arch")
        k = query.get("topk")
        if k is not None and self.topk_multiple and k % self.topk_multiple:
            out.append(f"topk {k} is not a multiple of {self.topk_multiple}")
        if k is not None and self.topk_max is not None and k > self.topk_max:
            out.append(f"topk {k} > {self.topk_max}")
        if k is not None and self.topk_values is not None and k not in self.topk_values:
            out.append(f"topk {k} not in {list(self.topk_values)}")
        dims, params = query.get("dims") or {}, query.get("params") or {}
        for name, most in (self.dim_max or {}).items():
            if name in dims and dims[name] > most:
                out.append(f"{name} {dims[name]} > {most}")
        for name, allowed in (self.dim_values or {}).items():
            if name in dims and dims[name] not in allowed:
                out.append(f"{name} {dims[name]} not in {list(allowed)}")
        for name, allowed in (self.params or {}).items():
            if name in params and params[name] not in allowed:
                out.append(f"{name} {params[name]!r} not in {list(allowed)}")
        for r in self.rules:
            if all(n in dims for n in r.needs) and not r.holds(dims):
                out.append(f"needs {r.text} (" + ", ".join(f"{n}={dims[n]}" for n in r.needs) + ")")
        return out


def _name(v: Any) -> str:
    return str(v).removeprefix("torch.")


def query_of(spec: OpSpec, bound: Mapping[str, Any], dims: Mapping[str, Any]) -> dict[str, Any]:
    """The capability-relevant facts of one call: dtype, fp8/scale format,
    heads, topk, page size and device, read off the validated arguments; under
    ``dims`` every bound int dim and param, under ``params`` the other params."""
    q: dict[str, Any] = {}
    for a in spec.args:
        v = bound.get(a.name)
        if isinstance(a, Tensor) and isinstance(v, torch.Tensor):
            q.setdefault("device", v.device.type)
            if v.dtype in DTYPE_GROUPS["fp8"]:
                q.setdefault("fp8_format", "e4m3fn" if v.dtype == torch.float8_e4m3fn else "e4m3fnuz")
            elif v.dtype.is_floating_point and a.name not in ("weights", "k_scale", "s", "sa", "sb", "freqs"):
                q.setdefault("dtype", v.dtype)
        elif isinstance(a, Param) and a.name in ("fmt", "scale_fmt") and v is not None:
            q.setdefault("fp8_format" if a.name == "fmt" else "scale_format", str(v))
    if "H" in dims:
        q["heads"] = dims["H"]
    if "k" in dims:
        q["topk"] = dims["k"]
    if "BS" in dims:
        q["page_size"] = dims["BS"]
    q["dims"] = {k: v for k, v in dims.items() if isinstance(v, int) and not isinstance(v, bool)}
    q["params"] = {a.name: bound.get(a.name) for a in spec.args
                   if isinstance(a, Param) and isinstance(bound.get(a.name), (str, bool))}
    return q
