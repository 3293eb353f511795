"""Declarative op specs: one entry per operator drives validation, the
reference, conformance cases, profiler FLOP/byte counts, fake kernels and docs.

An :class:`OpSpec` lists its arguments in call order. Tensor arguments carry a
symbolic shape: identifiers (``"T"``) bind on first sight and must agree
afterwards; expressions (``"N // 128"``, ``"cdiv(N, 128)"``) are checked once
every identifier is bound; a leading ``"*"`` admits any batch prefix, which
must be the same for every tensor that uses it. Integer parameters are visible
to shape expressions and to the FLOP/byte models under their own names.
"""
from __future__ import annotations

import inspect
import math
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ValidationError

REQUIRED = inspect.Parameter.empty

DTYPE_GROUPS: dict[str, tuple[torch.dtype, ...]] = {
    "float": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
    "fp8": (torch.float8_e4m3fn, torch.float8_e4m3fnuz),
    "int": (torch.int32, torch.int64),
    "int32": (torch.int32,),
    "uint8": (torch.uint8,),
    "fp32": (torch.float32,),
    "bool": (torch.bool,),
}


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _dtypes(spec: Iterable[str | torch.dtype]) -> tuple[torch.dtype, ...]:
    out: list[torch.dtype] = []
    for d in spec:
        out.extend(DTYPE_GROUPS[d] if isinstance(d, str) else (d,))
    return tuple(out)


def _dtype_names(dts: Iterable[torch.dtype]) -> str:
    return "{" + ", ".join(str(d).removeprefix("torch.") for d in dts) + "}"


@dataclass(frozen=True)
class Tensor:
    """A tensor argument: symbolic shape and the dtypes it may have."""

    name: str
    shape: tuple[str | int, ...]
    dtypes: tuple[str | torch.dtype, ...] = ("float",)
    optional: bool = False
    default: Any = REQUIRED
    doc: str = ""
    inplace: bool = False
    """The op may write this argument in place, and an output may share its storage (SPEC §10: every
    other input is read-only and no output aliases it). No op declares one today."""

    @property
    def allowed(self) -> tuple[torch.dtype, ...]:
        return _dtypes(self.dtypes)


@dataclass(frozen=True)
class Param:
    """A non-tensor argument (int, float, bool, str or format object)."""

    name: str
    types: tuple[type, ...]
    default: Any = REQUIRED
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    doc: str = ""


@dataclass(frozen=True)
class Output:
    """A returned tensor; ``dtype`` is fixed or computed from the bound args.
    ``when`` names an optional argument whose presence adds this output."""

    name: str
    shape: tuple[str | int, ...]
    dtype: torch.dtype | Callable[[Mapping[str, Any]], torch.dtype]
    when: str | None = None
    doc: str = ""

    def dtype_for(self, bound: Mapping[str, Any]) -> torch.dtype:
        """This output's dtype for one call's bound arguments."""
        return self.dtype(bound) if callable(self.dtype) else self.dtype


@dataclass(frozen=True)
class Check:
    """A cross-argument rule, e.g. 'N divisible by block'."""

    arg: str
    expected: str
    ok: Callable[[Mapping[str, Any], Mapping[str, Any]], bool]
    got: Callable[[Mapping[str, Any], Mapping[str, Any]], Any]


# The case vocabulary every spec module speaks. "quick" cases run in the main job, "full" ones
# with --full; the other tags say what a case probes (the harness and reports filter on them).
QUICK = frozenset({"quick", "full"})
TINY = QUICK | {"tiny"}
EDGE = QUICK | {"edge"}
POISON = EDGE | {"poison"}
DEEPSEEK = QUICK | {"deepseek"}
DEEPSEEK_FULL = frozenset({"full", "deepseek"})


def randn(gen: torch.Generator, *shape: int, scale: float = 1.0, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Standard-normal case input from the case's generator, scaled, then cast (the one random-input helper)."""
    x = torch.randn(*shape, generator=gen)
    return (x if scale == 1.0 else x * scale).to(dtype)


def leading_rows(dims: Mapping[str, Any]) -> int:
    """The product of an argument's leading ``*`` dims (1 when there are none), for FLOP and byte models."""
    n = 1
    for s in dims.get("*", ()):
        n *= s
    return n


@dataclass(frozen=True)
class Case:
    """One conformance/test case. ``make(gen)`` builds the arguments (CPU
    tensors) from a seeded generator; the seed derives from op and id, so a
    case is reproducible from its name alone."""

    op: str
    id: str
    make: Callable[[torch.Generator], dict[str, Any]]
    tags: frozenset[str] = QUICK
    note: str = ""
    fill_uninitialized: bool = False
    """Run the backend with torch's uninitialized-memory filling on (deterministic algorithms,
    ``torch.empty`` filled with NaN / the largest integer): an output slot the backend forgot to write
    comes out NaN, not lucky zeros."""

    @property
    def seed(self) -> int:
        return zlib.crc32(f"{self.op}/{self.id}".encode()) & 0x7FFFFFFF

    def inputs(self, seed: int | None = None) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed)
        return self.make(gen)


@dataclass(frozen=True)
class OpSpec:
    name: str
    family: str
    summary: str
    args: tuple[Tensor | Param, ...]
    outputs: tuple[Output, ...]
    metric: str
    source: str
    checks: tuple[Check, ...] = ()
    flops: Callable[[Mapping[str, Any]], float] = lambda d: 0.0
    bytes: Callable[[Mapping[str, Any]], float] | None = None
    reduction: str | None = None
    cases: Callable[[], list[Case]] = lambda: []
    doc: str = ""
    _signature: inspect.Signature = field(init=False, repr=False, compare=False)
    _compiled: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        params = [
            inspect.Parameter(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              default=None if isinstance(a, Tensor) and a.optional and a.default is REQUIRED else a.default)
            for a in self.args
        ]
        object.__setattr__(self, "_signature", inspect.Signature(params))
        # shape expressions are compiled once: validation runs on every call
        exprs = {d for a in self.args if isinstance(a, Tensor) for d in a.shape if isinstance(d, str) and d != "*" and not d.isidentifier()}
        exprs |= {d for o in self.outputs for d in o.shape if isinstance(d, str) and d != "*" and not d.isidentifier()}
        object.__setattr__(self, "_compiled", {e: compile(e, f"<{self.name} shape>", "eval") for e in exprs})

    # -- binding and validation -------------------------------------------------
    @property
    def signature(self) -> inspect.Signature:
        return self._signature

    def bind(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as e:
            raise ValidationError(self.name, "(call)", f"signature {self.name}{self._signature}", str(e)) from None
        bound.apply_defaults()
        return dict(bound.arguments)

    def validate(self, bound: Mapping[str, Any]) -> dict[str, Any]:
        """Check every argument; return the bound symbolic dims (plus int params)."""
        dims: dict[str, Any] = {}
        exprs: list[tuple[str, str, tuple, torch.Tensor]] = []
        device = None
        for a in self.args:
            v = bound.get(a.name)
            if isinstance(a, Param):
                self._check_param(a, v)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    dims[a.name] = v
                continue
            if v is None:
                if a.optional:
                    continue
                raise ValidationError(self.name, a.name, "a tensor", "None")
            if not isinstance(v, torch.Tensor):
                raise ValidationError(self.name, a.name, "a torch.Tensor", type(v).__name__)
            if device is None:
                device = (a.name, v.device)
            elif v.device != device[1]:
                raise ValidationError(self.name, a.name, f"device {device[1]} (as '{device[0]}')", str(v.device))
            if v.dtype not in a.allowed:
                raise ValidationError(self.name, a.name, f"dtype in {_dtype_names(a.allowed)}", str(v.dtype).removeprefix("torch."))
            self._bind_shape(a, v, dims, exprs)
        env = {"cdiv": cdiv, "__builtins__": {}}
        for argname, expr, shape, t in exprs:
            want = eval(self._compiled[expr], env, dims)  # noqa: S307 - expressions come from specs, not users
            idx = shape.index(expr) - len(shape)
            if t.shape[idx] != want:
                raise ValidationError(self.name, argname, f"shape {self._pretty(shape)} with {expr} = {want}", tuple(t.shape))
        for c in self.checks:
            if not c.ok(bound, dims):
                raise ValidationError(self.name, c.arg, c.expected, c.got(bound, dims))
        return dims

    def _check_param(self, p: Param, v: Any) -> None:
        if not isinstance(v, p.types) or (isinstance(v, bool) and bool not in p.types):
            raise ValidationError(self.name, p.name, f"type {'/'.join(t.__name__ for t in p.types)}", f"{type(v).__name__} {v!r}")
        if p.choices is not None and v not in p.choices and not any(str(v) == str(c) for c in p.choices):
            raise ValidationError(self.name, p.name, f"one of {list(p.choices)}", repr(v))
        if p.minimum is not None and not v >= p.minimum:  # `not >=` also rejects NaN (nan < min is False)
            raise ValidationError(self.name, p.name, f">= {p.minimum}" + (" (not NaN)" if v != v else ""), repr(v))

    def outputs_for(self, bound: Mapping[str, Any]) -> list[Output]:
        """The outputs this call returns, in order (an optional output only when its ``when`` argument is given)."""
        return [o for o in self.outputs if o.when is None or bound.get(o.when) is not None]

    def shape_dims(self, bound: Mapping[str, Any]) -> dict[str, Any]:
        """The dims bound from tensor shapes and numeric params alone: no value
        checks, so it works on meta and fake tensors (the cost model, fake kernels)."""
        dims: dict[str, Any] = {}
        for a in self.args:
            v = bound.get(a.name)
            if isinstance(a, Tensor) and isinstance(v, torch.Tensor):
                self._bind_shape(a, v, dims, [])
            elif isinstance(a, Param) and isinstance(v, (int, float)) and not isinstance(v, bool):
                dims[a.name] = v
        return dims

    def _bind_shape(self, a: Tensor, t: torch.Tensor, dims: dict[str, Any], exprs: list) -> None:
        shape = a.shape
        fixed = shape[1:] if shape and shape[0] == "*" else shape
        if (shape and shape[0] == "*" and t.dim() < len(fixed)) or (not (shape and shape[0] == "*") and t.dim() != len(shape)):
            want = f">= {len(fixed)}" if shape and shape[0] == "*" else str(len(shape))
            raise ValidationError(self.name, a.name, f"rank {want}, shape {self._pretty(shape)}", f"rank {t.dim()}, shape {tuple(t.shape)}")
        if shape and shape[0] == "*":
            prefix = tuple(t.shape[: t.dim() - len(fixed)])
            if "*" in dims and dims["*"] != prefix:
                raise ValidationError(self.name, a.name, f"batch dims {dims['*']}", prefix)
            dims["*"] = prefix
        tail = t.shape[t.dim() - len(fixed):]
        for d, n in zip(fixed, tail):
            if isinstance(d, int):
                if n != d:
                    raise ValidationError(self.name, a.name, f"shape {self._pretty(shape)}", tuple(t.shape))
            elif d.isidentifier():
                if d in dims and dims[d] != n:
                    raise ValidationError(self.name, a.name, f"shape {self._pretty(shape)} with {d} = {dims[d]}", tuple(t.shape))
                dims[d] = n
            else:
                exprs.append((a.name, d, fixed, t))

    @staticmethod
    def _pretty(shape: tuple) -> str:
        return "[" + ", ".join("..." if d == "*" else str(d) for d in shape) + "]"

    def checked(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap an implementation so every call is validated against this spec."""
        spec = self

        def call(*args: Any, **kwargs: Any) -> Any:
            bound = spec.bind(*args, **kwargs)
            spec.validate(bound)
            return fn(**bound)

        call.__name__ = call.__qualname__ = self.name
        call.__doc__ = fn.__doc__ or self.summary
        call.__wrapped__ = fn  # type: ignore[attr-defined]
        call.__signature__ = self._signature  # type: ignore[attr-defined]
        return call

    # -- models used by profiler, docs and fake kernels ------------------------
    def output_shapes(self, bound: Mapping[str, Any], dims: Mapping[str, Any]) -> list[tuple[int, ...]]:
        env = {"cdiv": cdiv, "__builtins__": {}}
        shapes = []
        for o in self.outputs:
            if o.when is not None and bound.get(o.when) is None:
                continue
            shape: list[int] = []
            for d in o.shape:
                if d == "*":
                    shape.extend(dims.get("*", ()))
                else:
                    shape.append(d if isinstance(d, int) else int(dims[d] if d.isidentifier() else eval(self._compiled[d], env, dict(dims))))  # noqa: S307
            shapes.append(tuple(shape))
        return shapes

    def cost(self, bound: Mapping[str, Any], shapes_only: bool = False) -> tuple[float, float]:
        """(FLOPs, bytes moved) for these arguments: the roofline inputs. With
        ``shapes_only`` the arguments may be meta tensors: dims come from their
        shapes (:meth:`shape_dims`) and the value checks are skipped."""
        dims = self.shape_dims(bound) if shapes_only else self.validate(bound)
        ns = {**dims, **{k: v for k, v in bound.items() if not isinstance(v, torch.Tensor)}}
        if self.bytes is not None:
            nbytes = float(self.bytes(ns))
        else:  # default: every input read once, every output written once
            nbytes = float(sum(v.numel() * v.element_size() for v in bound.values() if isinstance(v, torch.Tensor)))
            nbytes += self._output_bytes(bound, dims)
        return float(self.flops(ns)), nbytes

    def _output_bytes(self, bound: Mapping[str, Any], dims: Mapping[str, Any]) -> float:
        total = 0.0
        for o, shape in zip(self.outputs_for(bound), self.output_shapes(bound, dims)):
            total += math.prod(shape) * torch.empty((), dtype=o.dtype_for(bound)).element_size()
        return total


_REGISTRY: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"op spec '{spec.name}' registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def specs() -> dict[str, OpSpec]:
    """Every op spec, keyed by op name, in declaration order."""
    from . import ops  # noqa: F401  (importing registers the specs)

    return dict(_REGISTRY)


def get_spec(name: str) -> OpSpec:
    table = specs()
    if name not in table:
        import difflib

        close = difflib.get_close_matches(name, table, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValidationError("dsport", "op", f"one of {sorted(table)}{hint}", repr(name))
    return table[name]
