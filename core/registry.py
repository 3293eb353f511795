"""Backends and the resolved OpTable.

A backend is a module meeting the contract of :mod:`dsport.core.backend`
(``OPS``, ``available()`` and optional hooks with defaults). Built-in
backends live in ``dsport.backends``; third-party ones register a module path
under the entry-point group ``dsport.backends``.

Resolution happens once, when the OpTable is built: for every op the
candidates (per-op override, requested backend, fallback chain) are judged in
order (available? implements the op? capabilities admit the config?) and the
first that passes is bound. Afterwards an op is a plain attribute holding the
bound function: no lookup or dispatch per call.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backend import BackendContractError, BackendModule, check_section, import_backend
from .config import Config, unknown_name, from_mapping, load_config
from .errors import BackendUnavailable, ConfigError, ResolveError
from .spec import specs

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dsport.backends"
BUILTIN_BACKENDS: dict[str, str] = {
    "reference": "dsport.backends.reference",
    "torch": "dsport.backends.torch",
    "triton": "dsport.backends.triton",
    "tilelang": "dsport.backends.tilelang",
    "cuda": "dsport.backends.cuda",
    "hip": "dsport.backends.hip",
    "npu": "dsport.backends.npu",
    "onnx": "dsport.backends.onnx",
}


@dataclass(frozen=True)
class BackendSource:
    """Where a backend comes from: a built-in module or a plugin's entry point."""

    name: str
    module: str
    origin: str  # "builtin" or "plugin <distribution>"
    shadows: tuple[str, ...] = ()  # other sources with this name that were ignored


def discover() -> dict[str, BackendSource]:
    """Every known backend name. Built-ins come first and win a name clash;
    the ignored plugin is recorded in ``shadows`` so the clash is visible."""
    found = {n: BackendSource(n, m, "builtin") for n, m in BUILTIN_BACKENDS.items()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        origin = f"plugin {dist.name}" if dist is not None else "plugin"
        if ep.name in found:
            prev = found[ep.name]
            if prev.module == ep.value:  # the same distribution seen twice on sys.path
                continue
            log.warning("backend '%s' from %s ignored: the name is taken by %s", ep.name, origin, prev.origin)
            found[ep.name] = BackendSource(prev.name, prev.module, prev.origin, (*prev.shadows, f"{ep.value} ({origin})"))
        else:
            found[ep.name] = BackendSource(ep.name, ep.value, origin)
    return found


@dataclass
class Backend:
    """A loaded (or failed) backend: availability with its reason, never an exception."""

    source: BackendSource
    module: BackendModule | None
    ok: bool
    reason: str

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def ops(self) -> Mapping[str, Callable[..., Any]]:
        return self.module.ops if self.module is not None else {}


def load(name: str, sources: Mapping[str, BackendSource] | None = None, options: Mapping[str, Any] | None = None) -> Backend:
    """Import backend ``name``, hand it its options (see :meth:`BackendModule.apply_options`)
    and ask whether it runs here. A broken backend (import error, a hook
    breaking the contract, raising ``available()``) comes back unavailable
    with the error as its reason; it never takes others down, and neither
    does an option environment variable it cannot parse (the reason names it)."""
    sources = discover() if sources is None else sources
    if name not in sources:
        raise unknown_name("backend", name, list(sources))
    src = sources[name]
    try:
        mod = import_backend(src.module, name)
    except BackendContractError as e:
        return Backend(src, None, False, f"not a backend module: {e}")
    except Exception as e:  # noqa: BLE001 - any import failure is a reason, not a crash
        return Backend(src, None, False, f"import failed: {type(e).__name__}: {e}")
    if mod.options:
        try:
            mod.apply_options(options)
        except ConfigError as e:
            return Backend(src, mod, False, f"options: {e}")
    ok, reason = mod.available()
    return Backend(src, mod, ok, reason)


def backend_options(name: str, section: Any, origin: str = "config") -> dict[str, Any]:
    """The config section named after backend ``name``, checked against the options it declares (``OPTIONS``)."""
    sources = discover()
    if name not in sources:
        raise unknown_name("backend", name, list(sources))
    try:  # imported, not loaded: checking a file must not apply options or probe availability
        mod = import_backend(sources[name].module, name)
    except Exception as e:  # noqa: BLE001 - the reason it cannot be checked is the error
        raise ConfigError(f"{origin}: {name}: the options of backend '{name}' cannot be checked: it does not import "
                          f"({type(e).__name__}: {e})") from None
    return check_section(name, mod.options, section)


def load_backend(name: str) -> BackendModule:
    """Backend ``name`` read through the contract; ConfigError if the name is
    unknown, BackendUnavailable (with the reason) if it cannot be imported."""
    b = load(name)
    if b.module is None:
        raise BackendUnavailable(f"backend '{name}': {b.reason}")
    return b.module


# -- planning: who serves each op, and why --------------------------------------
@dataclass(frozen=True)
class Verdict:
    backend: str
    reasons: tuple[str, ...]  # empty: this candidate can serve the op

    @property
    def ok(self) -> bool:
        return not self.reasons


@dataclass
class OpPlan:
    op: str
    served_by: str | None
    role: str  # "override", "requested", "fallback" or "unserved"
    verdicts: list[Verdict]

    def line(self) -> str:
        rejected = "; ".join(f"{v.backend}: {', '.join(v.reasons)}" for v in self.verdicts if not v.ok and v.backend != self.served_by)
        if self.served_by is None:
            return f"{self.op}: not served ({rejected})"
        return f"{self.op}: served by {self.served_by} ({self.role})" + (f"; rejected {rejected}" if rejected else "")


@dataclass
class Resolution:
    config: Config
    backends: dict[str, Backend]
    ops: dict[str, OpPlan] = field(default_factory=dict)

    @property
    def failures(self) -> list[OpPlan]:
        """Ops the policy cannot serve (strict: the first candidate failed)."""
        return [p for p in self.ops.values() if p.served_by is None]

    def trace(self) -> list[str]:
        """One line per op that is not served by its first candidate."""
        return [p.line() for p in self.ops.values() if p.role in ("fallback", "unserved")]


def judge(backend: Backend, op: str, query: Mapping[str, Any]) -> tuple[str, ...]:
    """Why ``backend`` cannot serve ``op`` under ``query``; empty if it can."""
    if not backend.ok or backend.module is None:
        return (f"unavailable: {backend.reason}",)
    return backend.module.refusal(op, query)


def plan(config: Config) -> Resolution:
    """Judge every candidate of every op; raise nothing (``resolve`` decides)."""
    sources = discover()
    names = {b for op in specs() for b in config.chain(op)}
    backends = {n: load(n, sources, config.backend_options.get(n)) for n in sorted(names)}
    query = config.query()
    result = Resolution(config, backends)
    for op in specs():
        chain = config.chain(op)
        verdicts = [Verdict(b, judge(backends[b], op, query)) for b in chain]
        allowed = verdicts[:1] if config.fallback == "strict" else verdicts
        chosen = next((v for v in allowed if v.ok), None)
        if chosen is None:
            role = "unserved"
        elif chosen is verdicts[0]:
            role = "override" if config.ops.get(op) == chosen.backend else "requested"
        else:
            role = "fallback"
        result.ops[op] = OpPlan(op, chosen.backend if chosen else None, role, verdicts)
    for b in backends.values():
        stray = sorted(set(b.ops) - set(specs()))
        if stray:
            log.warning("backend '%s' has ops no spec knows (ignored): %s", b.name, stray)
    return result


# -- the OpTable ----------------------------------------------------------------
class OpTable:
    """Every op bound once. ``table.act_quant(...)`` calls the bound function
    directly (an instance attribute): there is no lookup or dispatch per call.
    An op nothing could serve is absent; touching it raises ResolveError with
    every candidate's reason."""

    def __init__(self, bound: dict[str, Callable[..., Any]], served_by: dict[str, str], trace: list[str],
                 plan: Resolution | None = None):
        self.__dict__.update(bound)
        self.ops = dict(bound)
        self.served_by = served_by
        self.trace = trace
        self.plan = plan

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails, so bound ops never come here.
        if name.startswith("__") or name in ("ops", "served_by", "trace", "plan"):
            raise AttributeError(name)
        plan = self.__dict__.get("plan")
        if plan is not None and name in plan.ops:
            raise ResolveError(f"op '{name}' is not served by this table: {plan.ops[name].line()}")
        raise AttributeError(f"OpTable has no op '{name}'" + _hint(name))

    def __repr__(self) -> str:
        return f"OpTable({', '.join(f'{op}={b}' for op, b in self.served_by.items())})"


def _hint(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, specs(), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def as_config(selection: str | os.PathLike[str] | Mapping[str, Any] | Config | None) -> Config:
    """A backend name, a YAML path, a mapping in the YAML schema, or a Config.
    The environment is read only for ``None`` and for a file path."""
    if selection is None:
        return load_config()
    if isinstance(selection, Config):
        return selection
    if isinstance(selection, Mapping):
        return from_mapping(selection, origin="resolve() argument")
    if isinstance(selection, os.PathLike) or (isinstance(selection, str) and selection.endswith((".yaml", ".yml"))):
        return load_config(Path(selection))
    if isinstance(selection, str):
        return from_mapping({"backend": selection}, origin="resolve() argument")
    raise ConfigError(f"resolve: expected a backend name, a YAML path, a mapping or a Config, got {type(selection).__name__}")


def resolve(selection: str | os.PathLike[str] | Mapping[str, Any] | Config | None = None, validate: bool = True,
            torch_library: bool = False) -> OpTable:
    """Bind every op once, as ``selection`` asks (see :func:`as_config`);
    with no selection, ``$DSPORT_CONFIG`` / ``$DSPORT_BACKEND``, else the reference.

    strict (the default): any op the chosen backend (or its per-op override)
    cannot serve is a ResolveError listing every such op with its reason. fallback: such
    ops are served by the next able candidate of the chain; ``table.trace``
    says which and why. With ``validate`` each call checks its arguments
    against the op spec (``spec.checked``). With ``torch_library`` the
    attributes call ``torch.ops.dsport.*`` (see dsport.core.library).
    """
    config = as_config(selection)
    p = plan(config)
    if config.fallback == "strict" and p.failures:
        lines = "\n  ".join(f"{o.op}: {o.verdicts[0].backend}: {', '.join(o.verdicts[0].reasons)}" for o in p.failures)
        chain = ", ".join(config.fallbacks) or "(empty)"
        raise ResolveError(f"strict: backend '{config.backend}' cannot serve {len(p.failures)} op(s) "
                           f"for this config ({config.origin}):\n  {lines}\n"
                           f"(fallback: fallback would serve them from the chain: {chain})")
    table = specs()
    bound: dict[str, Callable[..., Any]] = {}
    for op, o in p.ops.items():
        if o.served_by is None:
            continue
        impl = p.backends[o.served_by].ops[op]
        bound[op] = table[op].checked(impl) if validate else impl
    trace = p.trace()
    for line in trace:
        log.info("resolve: %s", line)
    result = OpTable(bound, {op: o.served_by for op, o in p.ops.items() if o.served_by}, trace, p)
    if torch_library:
        from .library import register

        ns = register(result)
        result = OpTable({op: getattr(ns, op) for op in bound}, result.served_by, trace, p)
    return result
