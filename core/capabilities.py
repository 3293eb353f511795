"""What a backend's implementation of an op can serve. A capability check
answers with human-readable reasons, never a bare boolean: an empty list
means "supported"."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from .spec import DTYPE_GROUPS, OpSpec, Param, Tensor

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Limit:
    """A bound a kernel puts on one dim or integer parameter of the call: a
    name the spec binds (``"D"``, ``"H"``, ``"E"``, ``"d_v"``, ``"block"``).
    ``None`` means "no bound of that kind"."""

    dim: str
    values: tuple[int, ...] | None = None   # exactly one of these
    max: int | None = None
    multiple: int | None = None
    why: str = ""                           # the kernel fact behind it, for the refusal message

    def reasons(self, v: int) -> list[str]:
        why = f" ({self.why})" if self.why else ""
        out = []
        if self.values is not None and v not in self.values:
            out.append(f"{self.dim} = {v} not in {list(self.values)}{why}")
        if self.max is not None and v > self.max:
            out.append(f"{self.dim} = {v} > {self.max}{why}")
        if self.multiple and v % self.multiple:
            out.append(f"{self.dim} = {v} is not a multiple of {self.multiple}{why}")
        return out


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
    limits: tuple[Limit, ...] = ()                  # bounds on dims and integer parameters
    rules: tuple[Rule, ...] = ()                    # limits over several dims at once
    params: Mapping[str, tuple[Any, ...]] | None = None  # allowed values of string/bool parameters (score_func)
    arg_dtypes: tuple[tuple[str, tuple[torch.dtype, ...]], ...] = ()  # (argument, dtypes accepted) beyond `dtypes`
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
        dims = query.get("dims") or {}
        for lim in self.limits:
            if dims.get(lim.dim) is not None:
                out.extend(lim.reasons(dims[lim.dim]))
        for r in self.rules:
            if all(n in dims for n in r.needs) and not r.holds(dims):
                out.append(f"needs {r.text} (" + ", ".join(f"{n}={dims[n]}" for n in r.needs) + ")")
        params = query.get("params") or {}
        for name, allowed in (self.params or {}).items():
            if name in params and params[name] not in allowed:
                out.append(f"{name} {params[name]!r} not in {list(allowed)}")
        given = query.get("arg_dtypes") or {}
        for arg, allowed in self.arg_dtypes:
            if given.get(arg) is not None and given[arg] not in allowed:
                out.append(f"{arg} dtype {_name(given[arg])} not in {[_name(a) for a in allowed]}")
        return out


def declare(cap: Capability) -> Callable[[F], F]:
    """Attach ``cap`` to one implementation of an op. For a backend whose table
    entry for an op differs by machine (an own kernel, a vendor library's
    adapter, the adapter over a contract model), the limits travel with the
    implementation that has them; :func:`capability_of` reads them back."""

    def attach(fn: F) -> F:
        fn.capability = cap  # type: ignore[attr-defined]
        return fn

    return attach


def capability_of(fn: Any) -> Capability | None:
    """The capability :func:`declare` attached to ``fn``; ``None`` when it has none."""
    cap = getattr(fn, "capability", None)
    return cap if isinstance(cap, Capability) else None


def _name(v: Any) -> str:
    return str(v).removeprefix("torch.")


def query_of(spec: OpSpec, bound: Mapping[str, Any], dims: Mapping[str, Any]) -> dict[str, Any]:
    """The capability-relevant facts of one call: dtype, fp8/scale format,
    heads, topk, page size and device, read off the validated arguments; under
    ``dims`` every integer dim and parameter the spec bound, under ``params``
    the string and bool parameters, under ``arg_dtypes`` each tensor
    argument's dtype."""
    q: dict[str, Any] = {}
    q["dims"] = {k: v for k, v in dims.items() if isinstance(v, int) and not isinstance(v, bool)}
    q["params"] = {a.name: bound.get(a.name) for a in spec.args
                   if isinstance(a, Param) and isinstance(bound.get(a.name), (str, bool))}
    q["arg_dtypes"] = {a.name: bound[a.name].dtype for a in spec.args
                       if isinstance(a, Tensor) and isinstance(bound.get(a.name), torch.Tensor)}
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
    return q
