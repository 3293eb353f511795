"""Backend selection as data: a YAML file, an environment variable and CLI
flags, merged in that order of precedence and validated against a fixed
schema. Every unknown name is an error that lists the valid ones.

    backend: torch                  # the requested backend
    ops: {sparse_mla_prefill: triton}   # per-op overrides
    fallback: fallback              # strict (default) | fallback
    fallback_chain: [torch, reference]  # tried after the requested backend
    device: cuda                    # torch device string
    dtype: bfloat16                 # float32 | bfloat16 | float16 | float64
    fp8: {format: e4m3fn, scale: ue8m0}
    arch: sm_90a                    # optional: one of KNOWN_ARCHS, checked against capabilities
    allow_absent_device: true       # optional: accept a device this machine lacks (building, planning)
    onnx: {opset: 21}               # a section named after a backend: the options it declares (OPTIONS)
    parallel: {tp: 2, ep: 4}        # optional: tensor/expert-parallel degrees; launch max(tp, ep) ranks with torchrun

A document that is empty or not a mapping, a key given twice, a file that is
not text, a ``device`` this machine does not have (unless
``allow_absent_device``) and an ``arch`` no target knows are errors naming
the file and the key.

Precedence: defaults < YAML file < environment (``DSPORT_CONFIG`` names a
file, ``DSPORT_BACKEND`` a backend) < CLI flags.
"""
from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, ValidationError
from .files import read_text
from .fp8 import FP8_FORMATS, SCALE_FORMATS

ENV_CONFIG = "DSPORT_CONFIG"
ENV_BACKEND = "DSPORT_BACKEND"
POLICIES = ("strict", "fallback")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64,
}
DEFAULT_CHAIN = ("torch", "reference")
TOP_KEYS = ("backend", "ops", "fallback", "fallback_chain", "device", "dtype", "fp8", "arch", "allow_absent_device", "parallel")
ENV_ALLOW_ABSENT_DEVICE = "DSPORT_ALLOW_ABSENT_DEVICE"
# the GPU architectures some part of dsport targets: native FP8 formats (core/fp8.py) and build limits (core/build.py)
KNOWN_ARCHS = ("sm_89", "sm_90a", "gfx942", "gfx950")
FP8_KEYS = ("format", "scale")
PARALLEL_KEYS = ("tp", "ep")


@dataclass(frozen=True)
class Config:
    """A validated selection. ``None`` fields are not part of the capability
    filter: only what the user stated is checked against what backends serve."""

    backend: str = "reference"
    ops: Mapping[str, str] = field(default_factory=dict)
    fallback: str = "strict"  # no op is served by a backend the user did not ask for unless they say so
    fallback_chain: tuple[str, ...] | None = None  # None: DEFAULT_CHAIN (see chain())
    device: str | None = None
    dtype: str | None = None
    fp8_format: str | None = None
    scale_format: str | None = None
    arch: str | None = None
    allow_absent_device: bool = False
    backend_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # backend -> the options stated for it
    tp: int = 1  # tensor-parallel degree (core/model/parallel.py)
    ep: int = 1  # expert-parallel degree
    origin: str = "defaults"

    def chain(self, op: str) -> tuple[str, ...]:
        """Candidates for ``op`` in order: override, requested backend, the
        fallback chain (strict mode may use only the first)."""
        seen: list[str] = []
        for b in (self.ops.get(op), self.backend, *self.fallbacks):
            if b is not None and b not in seen:
                seen.append(b)
        return tuple(seen)

    @property
    def fallbacks(self) -> tuple[str, ...]:
        """The chain after the requested backend. By default torch then
        reference, except for the reference itself: an oracle that quietly
        borrowed an op from a backend it is meant to judge would judge nothing."""
        if self.fallback_chain is not None:
            return self.fallback_chain
        return () if self.backend == "reference" else DEFAULT_CHAIN

    def query(self) -> dict[str, Any]:
        """The capability query this config implies (see Capability.reasons)."""
        q: dict[str, Any] = {}
        if self.device is not None:
            q["device"] = torch.device(self.device).type
        if self.dtype is not None:
            q["dtype"] = DTYPES[self.dtype]
        if self.fp8_format is not None:
            q["fp8_format"] = self.fp8_format
        if self.scale_format is not None:
            q["scale_format"] = self.scale_format
        if self.arch is not None:
            q["arch"] = self.arch
        return q

    def to_mapping(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.backend, "ops": dict(self.ops), "fallback": self.fallback,
                               "fallback_chain": list(self.fallbacks)}
        for k in ("device", "dtype", "arch"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        fp8 = {k: v for k, v in (("format", self.fp8_format), ("scale", self.scale_format)) if v is not None}
        if fp8:
            out["fp8"] = fp8
        if self.allow_absent_device:
            out["allow_absent_device"] = True
        out.update({b: dict(o) for b, o in self.backend_options.items()})
        if (self.tp, self.ep) != (1, 1):
            out["parallel"] = {"tp": self.tp, "ep": self.ep}
        return out


def device_present(device: torch.device) -> tuple[bool, str]:
    """Whether this machine has ``device``, and if not, why not."""
    kind = device.type
    if kind in ("cpu", "meta"):
        return True, ""
    mod = getattr(torch, kind, None)
    if mod is None or not hasattr(mod, "is_available"):
        return False, f"this torch has no '{kind}' device support"
    if not mod.is_available():
        return False, f"torch.{kind}.is_available() is False on this machine"
    count = mod.device_count() if hasattr(mod, "device_count") else 1
    if device.index is not None and device.index >= count:
        return False, f"this machine has {count} {kind} device(s), so index {device.index} does not exist"
    return True, ""


def _known_archs() -> tuple[str, ...]:
    from .build import SHARED_LIMIT
    from .fp8 import FP8_FORMATS

    return tuple(dict.fromkeys([*KNOWN_ARCHS, *SHARED_LIMIT, *(a for f in FP8_FORMATS.values() for a in f.archs)]))


def unknown_name(what: str, got: Any, valid: Sequence[str]) -> ConfigError:
    """The error for a name not among ``valid``, with the closest valid name as a hint."""
    close = difflib.get_close_matches(str(got), list(valid), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"{what}: unknown name {got!r}{hint}; valid: {sorted(valid)}")


def _str(key: str, v: Any) -> str:
    if not isinstance(v, str):
        raise ConfigError(f"{key}: expected a string, got {type(v).__name__} {v!r}")
    return v


def backend_names() -> list[str]:
    from .registry import discover

    return list(discover())


def one_of(key: str, v: Any, valid: Sequence[str]) -> str:
    """A string that must be one of ``valid`` (backend names, policies, dtypes, formats)."""
    v = _str(key, v)
    if v not in valid:
        raise unknown_name(key, v, valid)
    return v


def from_mapping(data: Mapping[str, Any], base: Config | None = None, origin: str = "mapping") -> Config:
    """Validate ``data`` (the YAML schema) and lay it over ``base``."""
    from .spec import specs

    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: expected a mapping of settings, got {type(data).__name__}")
    names = backend_names()
    for k in data:
        if k not in TOP_KEYS and k not in names:
            raise unknown_name(f"{origin}: key", k, [*TOP_KEYS, *names])
    cfg = base or Config()
    kw: dict[str, Any] = {"origin": origin if cfg.origin == "defaults" else f"{cfg.origin} < {origin}"}
    if "backend" in data:
        kw["backend"] = one_of("backend", data["backend"], names)
    if "ops" in data:
        ops = data["ops"] or {}
        if not isinstance(ops, Mapping):
            raise ConfigError(f"ops: expected a mapping op -> backend, got {type(ops).__name__} {ops!r}")
        valid_ops = list(specs())
        merged = dict(cfg.ops)
        for op, b in ops.items():
            if op not in valid_ops:
                raise unknown_name("ops: op", op, valid_ops)
            merged[op] = one_of(f"ops.{op}", b, names)
        kw["ops"] = merged
    if "fallback" in data:
        kw["fallback"] = one_of("fallback", data["fallback"], POLICIES)
    if "fallback_chain" in data:
        chain = data["fallback_chain"]
        if not isinstance(chain, (list, tuple)):
            raise ConfigError(f"fallback_chain: expected a list of backend names, got {type(chain).__name__} {chain!r}")
        kw["fallback_chain"] = tuple(one_of("fallback_chain", b, names) for b in chain)
    if "allow_absent_device" in data:
        if not isinstance(data["allow_absent_device"], bool):
            raise ConfigError(f"{origin}: allow_absent_device: expected true or false, got {data['allow_absent_device']!r}")
        kw["allow_absent_device"] = data["allow_absent_device"]
    allow_absent = kw.get("allow_absent_device", cfg.allow_absent_device) or os.environ.get(ENV_ALLOW_ABSENT_DEVICE) == "1"
    if "device" in data:
        v = _str("device", data["device"])
        try:
            dev = torch.device(v)
        except (RuntimeError, ValueError) as e:
            raise ConfigError(f"device: expected a torch device string (cpu, cuda, cuda:1, ...), got {v!r}: {e}") from None
        present, why = device_present(dev)
        if not present and not allow_absent:
            raise ConfigError(f"{origin}: device: {v!r} is not present here: {why}; to name a device this machine lacks "
                              f"(building or planning for it), set 'allow_absent_device: true' (or "
                              f"--allow-absent-device, or ${ENV_ALLOW_ABSENT_DEVICE}=1)")
        kw["device"] = v
    if "dtype" in data:
        kw["dtype"] = one_of("dtype", _str("dtype", data["dtype"]).removeprefix("torch."), DTYPES)
    if "arch" in data:
        kw["arch"] = one_of("arch", data["arch"], _known_archs())
    if "fp8" in data:
        fp8 = data["fp8"]
        if not isinstance(fp8, Mapping):
            raise ConfigError(f"fp8: expected a mapping with keys {list(FP8_KEYS)}, got {type(fp8).__name__} {fp8!r}")
        for k in fp8:
            if k not in FP8_KEYS:
                raise unknown_name("fp8: key", k, FP8_KEYS)
        if "format" in fp8:
            kw["fp8_format"] = one_of("fp8.format", fp8["format"], list(FP8_FORMATS))
        if "scale" in fp8:
            kw["scale_format"] = one_of("fp8.scale", fp8["scale"], list(SCALE_FORMATS))
    sections = [k for k in data if k in names]
    if sections:
        from .registry import backend_options

        merged_opts = {b: dict(o) for b, o in cfg.backend_options.items()}
        for b in sections:
            merged_opts.setdefault(b, {}).update(backend_options(b, data[b], origin))
        kw["backend_options"] = merged_opts
    if "parallel" in data:
        kw.update(_parallel(data["parallel"], cfg, origin))
    return replace(cfg, **kw)


def _parallel(v: Any, cfg: Config, origin: str) -> dict[str, int]:
    """``parallel: {tp, ep}``: positive integers, one dividing the other (core/plan.check_world)."""
    from .plan import check_world

    if not isinstance(v, Mapping):
        raise ConfigError(f"{origin}: parallel: expected a mapping with keys {list(PARALLEL_KEYS)}, got {type(v).__name__} {v!r}")
    for k in v:
        if k not in PARALLEL_KEYS:
            raise unknown_name(f"{origin}: parallel: key", k, PARALLEL_KEYS)
    out = {"tp": v.get("tp", cfg.tp), "ep": v.get("ep", cfg.ep)}
    try:
        check_world(out["tp"], out["ep"], op="parallel")
    except ValidationError as e:
        raise ConfigError(f"{origin}: {e}") from None
    return out


def _strict_loader() -> type:
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice (first {seen[key].start_mark.line + 1}, again"
                                    f" line {key_node.start_mark.line + 1}); each setting must appear once", key_node.start_mark)
                seen[key] = key_node
            return super().construct_mapping(node, deep)

    return StrictLoader


def read_yaml(path: str | os.PathLike[str], base: Config | None = None) -> Config:
    import yaml

    p = Path(path)
    text = read_text(p, "a YAML mapping", label=f"config file {str(p)!r}")
    try:
        data = yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r}: not valid YAML: {e}") from None
    if data is None:
        raise ConfigError(f"config file {str(p)!r}: empty document; expected a mapping of settings such as 'backend: torch' "
                          f"(keys: {list(TOP_KEYS)})")
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {str(p)!r}: expected a mapping of settings (keys: {list(TOP_KEYS)}), "
                          f"got {type(data).__name__} {data!r:.60}")
    return from_mapping(data, base, origin=str(p))


def load_config(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None,
                cli: Mapping[str, Any] | None = None) -> Config:
    """Defaults < YAML file (``path``, else ``$DSPORT_CONFIG``) < ``$DSPORT_BACKEND`` < ``cli``
    (a mapping in the YAML schema). ``env`` defaults to ``os.environ``."""
    env = os.environ if env is None else env
    cfg = Config()
    if path is None and env.get(ENV_CONFIG):
        path = env[ENV_CONFIG]
    if path is not None:
        cfg = read_yaml(path, cfg)
    if env.get(ENV_BACKEND):
        cfg = from_mapping({"backend": env[ENV_BACKEND]}, cfg, origin=f"${ENV_BACKEND}")
    if cli:
        cfg = from_mapping(cli, cfg, origin="command line")
    return cfg


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that override a config file; see :func:`config_from_args`."""
    g = p.add_argument_group("backend selection (override the config file and environment)")
    g.add_argument("--config", metavar="FILE", help=f"YAML config (default: ${ENV_CONFIG})")
    g.add_argument("--backend", help=f"requested backend (default: ${ENV_BACKEND}, else the config, else reference)")
    g.add_argument("--op", action="append", default=[], metavar="OP=BACKEND", help="per-op override (repeatable)")
    g.add_argument("--fallback", choices=POLICIES, help="strict: fail on any op the backend cannot serve; fallback: use the chain")
    g.add_argument("--fallback-chain", metavar="B1,B2", help="backends tried after the requested one")
    g.add_argument("--device", help="torch device string")
    g.add_argument("--dtype", help=f"one of {list(DTYPES)}")
    g.add_argument("--fp8-format", help=f"one of {list(FP8_FORMATS)}")
    g.add_argument("--scale-format", help=f"one of {list(SCALE_FORMATS)}")
    g.add_argument("--arch", help=f"target architecture, one of {list(KNOWN_ARCHS)}")
    g.add_argument("--allow-absent-device", action="store_true", default=None,
                   help="accept a --device this machine does not have (building or planning for it)")


def config_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Config:
    cli: dict[str, Any] = {}
    for key in ("allow_absent_device", "backend", "fallback", "device", "dtype", "arch"):
        if getattr(args, key, None) is not None:
            cli[key] = getattr(args, key)
    if getattr(args, "fallback_chain", None):
        cli["fallback_chain"] = [b.strip() for b in args.fallback_chain.split(",") if b.strip()]
    ops: dict[str, str] = {}
    for item in getattr(args, "op", None) or ():
        op, sep, b = item.partition("=")
        if not sep or not op or not b:
            raise ConfigError(f"--op: expected OP=BACKEND, got {item!r}")
        ops[op.strip()] = b.strip()
    if ops:
        cli["ops"] = ops
    fp8 = {k: v for k, v in (("format", getattr(args, "fp8_format", None)), ("scale", getattr(args, "scale_format", None))) if v}
    if fp8:
        cli["fp8"] = fp8
    return load_config(getattr(args, "config", None), env=env, cli=cli)
