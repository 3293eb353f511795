"""The ops as ``torch.ops.dsport.*`` custom ops, so graphs built on an OpTable
trace under ``torch.compile(fullgraph=True)`` and ``torch.export``.

Everything is derived from the op specs: the schema from the argument list
(FP8/scale format objects travel as ``str``, optional tensors as ``Tensor?``),
the fake (meta) kernel from the Output shapes and dtypes. An op whose outputs
depend on an optional argument (rms_norm returns the residual sum only when a
residual is given) becomes two custom ops, ``NAME`` without that argument and
``NAME_with_ARG`` with it, because a schema has one fixed return arity; the
Python wrapper picks one by whether the argument is None.

Schemas and fake kernels are defined once per process. The implementations
behind ``torch.ops.dsport.*`` are those of the table last passed to
:func:`register`: the dispatcher has one kernel per op and key, so two tables
cannot be live at once under these names.

Custom ops return the spec's declared dtypes (what the fake kernel promises);
the reference's float64 outputs are rounded to them on the way out.
"""
from __future__ import annotations

import keyword
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from .fp8 import Fp8Format, ScaleFormat
from .spec import REQUIRED, OpSpec, Param, Tensor, specs

if TYPE_CHECKING:
    from .registry import OpTable

log = logging.getLogger(__name__)

NAMESPACE = "dsport"


@dataclass(frozen=True)
class Variant:
    """One custom op: a spec with a fixed set of present optional arguments."""

    spec: OpSpec
    name: str                       # custom-op name in the namespace
    args: tuple[Tensor | Param, ...]  # schema arguments, in call order
    outputs: tuple[int, ...]        # indices into spec.outputs
    dropped: tuple[str, ...]        # spec arguments absent from this variant (always None)

    def schema(self) -> str:
        args = ", ".join(_arg_schema(a, required=(a.name in self._required)) for a in self.args)
        rets = ["Tensor"] * len(self.outputs)
        ret = rets[0] if len(rets) == 1 else "(" + ", ".join(rets) + ")"
        return f"{self.name}({args}) -> {ret}"

    @property
    def _required(self) -> tuple[str, ...]:
        # The `when` arguments of a *_with_ARG variant are tensors that must be given.
        return tuple(o.when for i, o in enumerate(self.spec.outputs) if i in self.outputs and o.when)


def variants(spec: OpSpec) -> list[Variant]:
    whens = tuple(dict.fromkeys(o.when for o in spec.outputs if o.when))
    base_out = tuple(i for i, o in enumerate(spec.outputs) if o.when is None)
    if not whens:
        return [Variant(spec, spec.name, spec.args, base_out, ())]
    base = Variant(spec, spec.name, tuple(a for a in spec.args if a.name not in whens), base_out, whens)
    # A schema admits no required argument after a defaulted one: the now
    # required `when` tensors move ahead of the defaulted params (the wrapper
    # passes everything positionally in this variant's order).
    def has_default(a: Tensor | Param) -> bool:
        return a.name not in whens and ((isinstance(a, Tensor) and a.optional) or a.default is not REQUIRED)

    ordered = tuple(a for a in spec.args if not has_default(a)) + tuple(a for a in spec.args if has_default(a))
    full = Variant(spec, f"{spec.name}_with_{'_'.join(whens)}", ordered, tuple(range(len(spec.outputs))), ())
    return [base, full]


def _arg_schema(a: Tensor | Param, required: bool = False) -> str:
    if isinstance(a, Tensor):
        if a.optional and not required:
            return f"Tensor? {a.name}=None"
        return f"Tensor {a.name}"
    types = a.types
    if bool in types:
        t = "bool"
    elif float in types:
        t = "float"
    elif int in types:
        t = "int"
    elif str in types or Fp8Format in types or ScaleFormat in types:
        t = "str"
    else:
        raise TypeError(f"{a.name}: no schema type for {types}")
    if a.default is REQUIRED:
        return f"{t} {a.name}"
    if a.default is None:
        return f"{t}? {a.name}=None"
    d = a.default
    if t == "str":
        lit = f'"{d}"'
    elif t == "float":
        lit = repr(float(d))
    else:
        lit = repr(d)
    return f"{t} {a.name}={lit}"


def _to_schema_value(v: Any) -> Any:
    return v.name if isinstance(v, (Fp8Format, ScaleFormat)) else v


def _bind(var: Variant, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Schema arguments by name, defaults filled, dropped optionals None."""
    bound: dict[str, Any] = dict.fromkeys(var.dropped)
    bound.update(zip((a.name for a in var.args), args))
    bound.update(kwargs)
    for a in var.args:
        if a.name not in bound:
            bound[a.name] = None if isinstance(a, Tensor) or a.default is REQUIRED else a.default
    return bound


def _device(var: Variant, bound: Mapping[str, Any]) -> torch.device:
    return next(bound[a.name].device for a in var.args if isinstance(a, Tensor) and bound.get(a.name) is not None)


def _make_fake(var: Variant) -> Callable[..., Any]:
    def fake(*args: Any, **kwargs: Any) -> Any:
        bound = _bind(var, args, kwargs)
        dims = var.spec.shape_dims(bound)
        shapes = var.spec.output_shapes(bound, dims)
        dev = _device(var, bound)
        outs = [torch.empty(shape, dtype=o.dtype_for(bound), device=dev) for o, shape in zip(var.spec.outputs_for(bound), shapes)]
        return outs[0] if len(outs) == 1 else tuple(outs)

    return fake


def _make_impl(var: Variant, fn: Callable[..., Any]) -> Callable[..., Any]:
    # Everything knowable from the spec is settled here, not per call: this
    # wrapper sits on the hot path of every compiled dsport node.
    names = tuple(a.name for a in var.args)
    tensors = tuple(i for i, a in enumerate(var.args) if isinstance(a, Tensor))
    outs_spec = tuple(var.spec.outputs[i] for i in var.outputs)
    static = all(not callable(o.dtype) for o in outs_spec)
    single = len(outs_spec) == 1

    def impl(*args: Any, **kwargs: Any) -> Any:
        if kwargs or len(args) != len(names):
            bound = _bind(var, args, kwargs)
            ins = [bound[names[i]] for i in tensors]
        else:
            bound = dict(zip(names, args))
            for d in var.dropped:
                bound[d] = None
            ins = [args[i] for i in tensors]
        res = fn(**bound)
        outs = (res,) if single and not isinstance(res, (tuple, list)) else tuple(res)
        ptrs = {t.untyped_storage().data_ptr() for t in ins if t is not None and t.numel()}
        fixed = []
        for o, t in zip(outs_spec, outs):
            dt = o.dtype if static else o.dtype_for(bound)
            if t.dtype != dt:
                t = t.to(dt)
            if t.numel() and t.untyped_storage().data_ptr() in ptrs:
                t = t.clone()  # a custom op may not return a view of its input
            fixed.append(t)
        return fixed[0] if single else tuple(fixed)

    return impl


_DEF_LIB: torch.library.Library | None = None
_IMPL_LIB: torch.library.Library | None = None
_VARIANTS: dict[str, list[Variant]] = {}


def _has_tensor(spec: OpSpec) -> bool:
    return any(isinstance(a, Tensor) and not a.optional for a in spec.args)


def define() -> dict[str, list[Variant]]:
    """Define every schema and fake kernel once (idempotent). Ops without a
    tensor argument (yarn_freqs) are left out: the dispatcher picks a kernel
    by the tensors' device, and a setup-time table needs no graph node."""
    global _DEF_LIB
    if _DEF_LIB is not None:
        return _VARIANTS
    lib = torch.library.Library(NAMESPACE, "FRAGMENT")
    for spec in specs().values():
        if not _has_tensor(spec):
            log.debug("torch.library: %s has no tensor argument; not registered", spec.name)
            continue
        vs = variants(spec)
        for v in vs:
            lib.define(v.schema())
            torch.library.register_fake(f"{NAMESPACE}::{v.name}", _make_fake(v), lib=lib)
        _VARIANTS[spec.name] = vs
    _DEF_LIB = lib
    return _VARIANTS


def _wrapper(spec: OpSpec, vs: Sequence[Variant]) -> Callable[..., Any]:
    """A plain Python function with the spec's signature that calls the
    custom op(s); generated source so dynamo traces it without a break."""
    params, env = [], {"_v": _to_schema_value, "_ops": getattr(torch.ops, NAMESPACE)}
    for i, a in enumerate(spec.args):
        if keyword.iskeyword(a.name):
            raise ValueError(f"{spec.name}: argument name {a.name!r} is a Python keyword")
        default = None if isinstance(a, Tensor) and a.optional and a.default is REQUIRED else a.default
        if default is REQUIRED:
            params.append(a.name)
        else:
            env[f"_d{i}"] = default
            params.append(f"{a.name}=_d{i}")

    def call(v: Variant) -> str:
        return f"_ops.{v.name}(" + ", ".join(a.name if isinstance(a, Tensor) else f"_v({a.name})" for a in v.args) + ")"

    body = f"    return {call(vs[0])}\n"
    if len(vs) == 2:
        when = vs[0].dropped
        cond = " and ".join(f"{w} is None" for w in when)
        body = f"    if {cond}:\n        return {call(vs[0])}\n    return {call(vs[1])}\n"
    src = f"def {spec.name}({', '.join(params)}):\n{body}"
    exec(compile(src, f"<dsport.library {spec.name}>", "exec"), env)  # noqa: S102 - source built from specs
    fn = env[spec.name]
    fn.__doc__ = spec.summary
    return fn


def register(table: OpTable) -> SimpleNamespace:
    """Make ``torch.ops.dsport.*`` run ``table``'s bound functions and return
    a namespace of wrappers with the spec signatures (``ns.act_quant(x, ...)``).
    Ops the table lacks are absent from the namespace; ops with no tensor
    argument are the table's own functions."""
    global _IMPL_LIB
    vmap = define()
    if _IMPL_LIB is not None:
        _IMPL_LIB._destroy()  # one kernel per op: the previous table's go away
    lib = torch.library.Library(NAMESPACE, "IMPL")
    ns = SimpleNamespace()
    for op, fn in table.ops.items():
        if op not in vmap:
            setattr(ns, op, fn)
            continue
        for v in vmap[op]:
            lib.impl(v.name, _make_impl(v, fn), "CompositeExplicitAutograd")
        setattr(ns, op, _wrapper(specs()[op], vmap[op]))
    _IMPL_LIB = lib
    return ns
