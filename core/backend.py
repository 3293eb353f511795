"""The backend contract: every hook a backend module may define, its default
and its meaning, and the one loader that reads them.

A backend is a plain Python module (built in under ``dsport.backends``, or a
plugin registered under the entry-point group ``dsport.backends``). Only
``OPS`` and ``available`` are required; every other hook has a default.
Everything that consumes a backend — the registry, the conformance worker,
the pytest plugin, the profiler, ``dsport build``, the model conformance —
goes through :func:`from_module`, which checks the hooks' types once and
hands back a :class:`BackendModule`. Nothing else reads a backend module's
attributes.

``HOOKS`` below is the written contract: the README's "Writing a backend"
section is printed from it (``dsport backends --contract``), and a test keeps
the two equal.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from .capabilities import Capability, capability_of
from .errors import ConfigError, DsportError

#: the verdict a passing case gets when it ran an adapter against contract models, not the vendor library
CONTRACT = "contract"


class BackendContractError(DsportError, TypeError):
    """A backend module breaks the contract: a hook is missing or has the wrong type."""

    def __init__(self, module: str, hook: str, expected: str, got: Any):
        self.module, self.hook = module, hook
        super().__init__(f"backend module {module}: hook '{hook}': expected {expected}, got {got}")


@dataclass(frozen=True)
class Hook:
    """One attribute a backend module may define."""

    name: str
    kind: str          # the type, as written in the contract page
    default: str       # what an absent hook means
    doc: str
    required: bool = False


HOOKS: tuple[Hook, ...] = (
    Hook("OPS", "dict[str, Callable]", "(required)", required=True,
         doc="The op table: op name (a key of `dsport.core.spec.specs()`) -> the implementation, called with the "
             "spec's arguments by keyword and returning the spec's outputs (a tensor or a tuple in spec order). "
             "An op a backend does not serve is simply absent; name it in `NOT_SERVED` to say why. A name no spec "
             "knows is never called (`dsport conformance` on a named backend reports it, with the close match)."),
    Hook("available", "() -> tuple[bool, str]", "(required)", required=True,
         doc="Whether the backend runs on this machine, and why (not). Must not raise; it is called before any op. "
             "A backend that needs a device, a vendor library or a toolchain says exactly which is missing."),
    Hook("NAME", "str", "the registry name",
         doc="The name reports and errors use."),
    Hook("DESCRIPTION", "str", "''", doc="One line for `dsport backends`."),
    Hook("PRECISION", "str", "''",
         doc="How the backend computes: accumulation dtypes, FP8 formats, rounding. Shown by `dsport backends`."),
    Hook("CAPABILITIES", "dict[str, Capability]", "{} (no limits)",
         doc="Per-op limits (`dsport.core.capabilities.Capability`: dtypes, FP8 and scale formats, head counts, top-k, "
             "page sizes, devices, archs, bounds on any dim or integer parameter (`Limit`), rules over several dims (`Rule`), allowed values of string parameters, per-argument dtypes). The resolver and conformance call a case outside them `unsupported` "
             "instead of running it; declare every limit a kernel has, never let it fail at run time instead. An "
             "implementation may carry its own (`dsport.core.capabilities.declare`), which takes precedence: the "
             "limits travel with it when the table entry differs by machine (own kernel, vendor adapter, contract model)."),
    Hook("NOT_SERVED", "dict[str, str]", "{}",
         doc="Ops of the spec the backend deliberately leaves to the fallback chain, with the reason. "
             "Nothing falls back silently inside a backend: a resolver must ask for `fallback`."),
    Hook("ENV", "dict[str, str]", "{}",
         doc="Environment variables that must be set before the backend is imported (Triton on CPU: "
             "`TRITON_INTERPRET=1`). Conformance workers re-execute themselves with them set."),
    Hook("QUICK_TAGS", "tuple[str, ...]", "() (the whole quick set)",
         doc="For a backend that is slow here (an interpreter, a compile per shape): in the quick set only cases "
             "carrying one of these tags run; the others are reported `skip` with that reason, never dropped."),
    Hook("TARGETS", "tuple[str, ...]", "() (no ahead-of-time build)",
         doc="Targets `build` compiles for with no device present (`sm_90a`, `gfx950`, `gfx942`)."),
    Hook("build", "(target: str, out_dir: PathLike) -> list[KernelBuild]", "None",
         doc="Compile every kernel for `target` and return one `dsport.core.build.KernelBuild` per kernel "
             "(registers, spills, shared memory, matrix instructions, findings). Reported `built`, never `pass`."),
    Hook("OPTIONS", "dict[str, Option]", "{} (takes no options)",
         doc="Settings a config file gives the backend in a section named after it (`onnx: {opset: 21}`): option "
             "name -> `dsport.core.backend.Option` (type, default, meaning, valid choices, minimum, and the "
             "environment variable that overrides the file). The config loader checks the section and names a wrong "
             "key, type or value; resolving hands every option, defaults filled in, to `configure`."),
    Hook("configure", "(options: dict[str, Any]) -> None", "None (required with OPTIONS)",
         doc="Receives the validated options (defaults < the config section < each option's environment variable) "
             "before `available()` is asked. Options are process-wide: the last resolved config's apply."),
    Hook("contract_ops", "() -> dict[str, Callable]", "None",
         doc="For adapters over vendor libraries (FlashMLA, DeepGEMM, aiter, torch_npu): the same op table with "
             "every vendor call served by its *contract model* — torch code reproducing the library's documented "
             "behaviour, its source cited. Where the backend is unavailable, conformance runs these ops instead and "
             "a passing case is reported `contract`: the layout and convention mapping is proven, the vendor "
             "kernel is not."),
)
_HOOK = {h.name: h for h in HOOKS}


OPTION_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str, "list[str]": list}


@dataclass(frozen=True)
class Option:
    """One setting a backend takes from the config section named after it."""

    type: str                 # a key of OPTION_TYPES
    default: Any
    doc: str
    choices: Callable[[], Sequence[str]] | None = None  # the valid strings (of each element, for list[str])
    minimum: int | float | None = None
    env: str | None = None    # the environment variable that overrides the config file

    def check(self, where: str, value: Any) -> Any:
        """``value`` if it is valid, else a ConfigError naming ``where`` (``onnx.opset``), what was expected and what was given."""
        want = OPTION_TYPES[self.type]
        # bool is an int in Python; a YAML `true` for a thread count is a mistake, not 1
        if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
            if not (want is float and isinstance(value, int) and not isinstance(value, bool)):
                raise ConfigError(f"{where}: expected {self.type}, got {type(value).__name__} {value!r}")
        if self.type == "list[str]":
            bad = [v for v in value if not isinstance(v, str)]
            if bad or not value:
                raise ConfigError(f"{where}: expected a non-empty list of strings, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{where}: expected at least {self.minimum}, got {value!r}")
        valid = list(self.choices()) if self.choices is not None else None
        if valid:
            from .config import unknown_name

            for v in value if self.type == "list[str]" else [value]:
                if v not in valid:
                    raise unknown_name(where, v, valid)
        return list(value) if self.type == "list[str]" else value

    def parse_env(self, raw: str) -> Any:
        """The value of the environment variable ``self.env`` (a comma list for list[str])."""
        where = f"${self.env}"
        if self.type == "list[str]":
            return self.check(where, [p.strip() for p in raw.split(",") if p.strip()])
        if self.type == "bool":
            if raw not in ("0", "1", "true", "false"):
                raise ConfigError(f"{where}: expected 0, 1, true or false, got {raw!r}")
            return self.check(where, raw in ("1", "true"))
        try:
            value = OPTION_TYPES[self.type](raw)
        except ValueError:
            raise ConfigError(f"{where}: expected {self.type}, got {raw!r}") from None
        return self.check(where, value)


def check_section(backend: str, options: Mapping[str, Option], section: Any) -> dict[str, Any]:
    """The config section for ``backend`` validated against its OPTIONS: only the options it states."""
    from .config import unknown_name

    if not options:
        raise ConfigError(f"{backend}: backend '{backend}' takes no options, got a section {section!r}")
    if not isinstance(section, Mapping):
        raise ConfigError(f"{backend}: expected a mapping of options {sorted(options)}, got {type(section).__name__} {section!r}")
    out: dict[str, Any] = {}
    for k, v in section.items():
        if k not in options:
            raise unknown_name(f"{backend}: option", k, list(options))
        out[k] = options[k].check(f"{backend}.{k}", v)
    return out


def option_values(options: Mapping[str, Option], stated: Mapping[str, Any] | None = None,
                  env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every option: its default < ``stated`` (a checked config section) < its environment variable."""
    import os

    env = os.environ if env is None else env
    out = {name: (stated or {}).get(name, o.default) for name, o in options.items()}
    for name, o in options.items():
        if o.env and env.get(o.env):
            out[name] = o.parse_env(env[o.env])
    return out


def options_markdown(options: Mapping[str, Option]) -> str:
    """A backend's options as a Markdown table (the README's per-backend settings)."""
    lines = ["| option | type | default | environment override | meaning |", "|---|---|---|---|---|"]
    for name, o in options.items():
        lines.append(f"| `{name}` | `{o.type}` | `{o.default!r}` | {f'`{o.env}`' if o.env else '-'} | {o.doc} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class BackendModule:
    """A backend module read once through the contract; every hook resolved to its value or default."""

    name: str
    module: ModuleType
    ops: Mapping[str, Callable[..., Any]]
    capabilities: Mapping[str, Capability] = field(default_factory=dict)
    description: str = ""
    precision: str = ""
    not_served: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    quick_tags: frozenset[str] = frozenset()
    targets: tuple[str, ...] = ()
    build: Callable[..., list[Any]] | None = None
    contract_ops: Callable[[], Mapping[str, Callable[..., Any]]] | None = None
    options: Mapping[str, Option] = field(default_factory=dict)
    configure: Callable[[dict[str, Any]], None] | None = None

    def apply_options(self, stated: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Hand every option (defaults < ``stated`` < environment) to ``configure``; returns them."""
        values = option_values(self.options, stated, env)
        if self.configure is not None and self.options:
            self.configure(values)
        return values

    def available(self) -> tuple[bool, str]:
        """``available()`` of the module; an exception becomes the reason, never escapes."""
        ok, reason, _ = self.availability()
        return ok, reason

    def availability(self) -> tuple[bool, str, bool]:
        """(ok, reason, broken): ``broken`` when ``available()`` raised instead of
        answering — a bug in the backend, not a missing device, so reports call
        it a crash, never a skip."""
        try:
            ok, reason = self.module.available()
        except Exception as e:  # noqa: BLE001 - a raising probe is a reason, not a crash
            return False, f"available() raised {type(e).__name__}: {e}", True
        return bool(ok), str(reason), False

    def refusal(self, op: str, query: Mapping[str, Any], ops: Mapping[str, Callable[..., Any]] | None = None) -> tuple[str, ...]:
        """Why this backend cannot serve ``op`` for ``query`` (see
        :func:`dsport.core.capabilities.query_of`); empty when it can. The one
        capability judgement: the resolver, conformance and the profiler all ask it."""
        table = self.ops if ops is None else ops
        if op not in table:
            return (f"does not implement {op}",)
        cap = capability_of(table[op])  # the implementation's own limits, where it declares them
        if cap is None:
            cap = self.capabilities.get(op)
        return tuple(cap.reasons(query)) if cap is not None else ()

    @property
    def can_build(self) -> bool:
        return self.build is not None and bool(self.targets)


def _get(mod: ModuleType, label: str, hook: str, types: type | tuple[type, ...] | None, default: Any) -> Any:
    """The value of ``hook`` (``types=None``: any callable), ``default`` when absent."""
    if not hasattr(mod, hook):
        if _HOOK[hook].required:
            raise missing_hook(label, hook, vars(mod))
        return default
    value = getattr(mod, hook)
    if not (callable(value) if types is None else isinstance(value, types)):
        raise BackendContractError(label, hook, _HOOK[hook].kind, type(value).__name__)
    return value


def missing_hook(label: str, hook: str, names: Iterable[str]) -> BackendContractError:
    """The error for a required hook a module does not define, with the near miss
    among ``names`` (what it does define) for a misspelled one (``OP``, ``Ops``,
    ``avaliable``). The one wording of it: the loader raises it for an imported
    module, ``dsport conformance --backend-module`` for a module's source before
    any worker imports it."""
    import difflib

    public = [a for a in names if not a.startswith("_")]
    close = [a for a in public if a.lower() == hook.lower()] or difflib.get_close_matches(hook, public, n=1, cutoff=0.6)
    near = f" (found '{close[0]}': a misspelling?)" if close else ""
    return BackendContractError(label, hook, f"{_HOOK[hook].kind} (required)", "nothing: not defined" + near)


def from_module(mod: ModuleType, name: str | None = None) -> BackendModule:
    """Read ``mod`` through the contract. Raises :class:`BackendContractError`
    naming the hook for a missing required hook or a hook of the wrong type.
    Op names the spec does not know are kept, not refused (a plugin may be
    newer than this dsport): the resolver ignores them with a warning and a
    conformance run that names the backend reports them as unchecked."""
    label = getattr(mod, "__name__", repr(mod))
    ops = _get(mod, label, "OPS", Mapping, None)
    _get(mod, label, "available", None, None)
    bad = [k for k, v in ops.items() if not callable(v)]
    if bad:
        raise BackendContractError(label, "OPS", "a callable per op", f"non-callable entries for {bad}")
    caps = dict(_get(mod, label, "CAPABILITIES", Mapping, {}) or {})
    wrong = [k for k, v in caps.items() if not isinstance(v, Capability)]
    if wrong:
        raise BackendContractError(label, "CAPABILITIES", "a Capability per op", f"other objects for {wrong}")
    build = _get(mod, label, "build", None, None)
    contract_ops = _get(mod, label, "contract_ops", None, None)
    options = dict(_get(mod, label, "OPTIONS", Mapping, {}) or {})
    wrong = [k for k, v in options.items() if not isinstance(v, Option) or v.type not in OPTION_TYPES]
    if wrong:
        raise BackendContractError(label, "OPTIONS", f"an Option (type one of {list(OPTION_TYPES)}) per name", f"other objects for {wrong}")
    configure = _get(mod, label, "configure", None, None)
    if options and configure is None:
        raise BackendContractError(label, "configure", "(options: dict[str, Any]) -> None (required with OPTIONS)", "nothing: not defined")
    return BackendModule(
        name=str(_get(mod, label, "NAME", str, name or label.rsplit(".", 1)[-1])),
        module=mod,
        ops=dict(ops),
        capabilities=caps,
        description=_get(mod, label, "DESCRIPTION", str, ""),
        precision=_get(mod, label, "PRECISION", str, ""),
        not_served=dict(_get(mod, label, "NOT_SERVED", Mapping, {}) or {}),
        env={str(k): str(v) for k, v in (_get(mod, label, "ENV", Mapping, {}) or {}).items()},
        quick_tags=frozenset(_get(mod, label, "QUICK_TAGS", (tuple, list, set, frozenset), ()) or ()),
        targets=tuple(_get(mod, label, "TARGETS", (tuple, list), ()) or ()),
        build=build,
        contract_ops=contract_ops,
        options=options,
        configure=configure,
    )


def import_backend(dotted: str, name: str | None = None) -> BackendModule:
    """Import ``package.module`` (or ``package.module:attribute``) and read it
    through the contract. Import errors propagate: the caller decides whether a
    missing backend is a skip (not named by the user) or an error (named)."""
    path, _, attr = dotted.partition(":")
    mod = importlib.import_module(path)
    return from_module(getattr(mod, attr) if attr else mod, name)


def contract_markdown() -> str:
    """The README's "Writing a backend" hook table, from ``HOOKS``."""
    lines = ["| hook | type | if absent | meaning |", "|---|---|---|---|"]
    for h in HOOKS:
        lines.append(f"| `{h.name}` | `{h.kind}` | {h.default} | {h.doc} |")
    return "\n".join(lines)
