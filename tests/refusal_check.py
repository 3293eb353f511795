"""test-only: every conformance case a backend's ``refusal()`` accepts must run without the
implementation refusing it at call time (NotImplementedError: a limit the capability table does
not declare, so the case would be reported ``raised NotImplementedError`` instead of the declared
reason, and the resolver would pick a backend that cannot serve the call)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dsport.core.backend import BackendModule
from dsport.core.capabilities import query_of
from dsport.core.spec import specs


def undeclared_refusals(mod: BackendModule, ops: Mapping[str, Callable[..., Any]], items: Iterable[tuple],
                        refused: tuple[type[BaseException], ...] = (NotImplementedError,),
                        device: str | None = None) -> tuple[int, int, list[str]]:
    """(cases accepted, cases declined by refusal(), 'op/case: message' for each accepted case whose call
    raised one of ``refused``). ``device`` stands in for the inputs' device type in the query (a kernel
    table whose launches are stubbed out is judged as it would be on its device)."""
    table = specs()
    accepted, declined, bad = 0, 0, []
    for op, case_id, *_ in items:  # (op, case) pairs or conformance Items (op, case, seed)
        if op not in ops:
            continue
        spec = table[op]
        case = next(c for c in spec.cases() if c.id == case_id)
        args = case.inputs()
        bound = spec.bind(**args)
        q = query_of(spec, bound, spec.validate(bound))
        if device is not None:
            q["device"] = device
        if mod.refusal(op, q, ops):
            declined += 1
            continue
        accepted += 1
        try:
            ops[op](**args)
        except refused as e:
            bad.append(f"{op}/{case_id}: {type(e).__name__}: {e}")
    return accepted, declined, bad


def declared_and_raised(mod: BackendModule, ops: Mapping[str, Callable[..., Any]], op: str, args: dict[str, Any],
                        device: str | None = None) -> tuple[tuple[str, ...], str | None]:
    """(what refusal() declares for this call, the NotImplementedError the call raises or None): for
    inputs built at a declared limit, which conformance cases do not reach."""
    spec = specs()[op]
    bound = spec.bind(**args)
    q = query_of(spec, bound, spec.validate(bound))
    if device is not None:
        q["device"] = device
    try:
        ops[op](**args)
        raised = None
    except NotImplementedError as e:
        raised = str(e)
    return mod.refusal(op, q, ops), raised


def without(cap: Any, field: str) -> Any:
    """``cap`` with one declaration dropped (set back to its 'no limit' default)."""
    import dataclasses

    default = next(f.default for f in dataclasses.fields(cap) if f.name == field)
    return dataclasses.replace(cap, **{field: default})
