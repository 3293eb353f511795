"""``dsport new-backend NAME [--path DIR]``: write a ready-to-edit backend
package. Its op table starts by delegating every op to the torch backend
(the reference where torch lacks one), so it installs and passes its
conformance test unchanged; a porter then replaces one op at a time.

Everything op-specific (signatures, summaries, outputs) is generated from
the op specs, so the scaffold never drifts from the contract.
"""
from __future__ import annotations

import argparse
import keyword
import re
import sys
import textwrap
from pathlib import Path

from ..errors import ConfigError
from ..spec import OpSpec, specs

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="backend name (lowercase identifier), e.g. npu")
    p.add_argument("--path", default=".", help="directory to create the project in (default: .)")


def _outputs(spec: OpSpec) -> str:
    outs = []
    for o in spec.outputs:
        dt = str(o.dtype).removeprefix("torch.") if not callable(o.dtype) else "see spec"
        when = f" (only with {o.when})" if o.when else ""
        outs.append(f"{o.name} [{', '.join(str(d) for d in o.shape)}] {dt}{when}")
    return "; ".join(outs)


def _op_source(spec: OpSpec) -> str:
    names = [a.name for a in spec.args]
    doc = "\n".join(textwrap.wrap(spec.summary, 96, initial_indent="    ", subsequent_indent="    "))
    return (f"@delegates\n"
            f"def {spec.name}{spec.signature}:\n"
            f'    """\n{doc}\n    Returns: {_outputs(spec)}.\n    """\n'
            f"    return _base.{spec.name}({', '.join(names)})\n")


def render(name: str) -> dict[str, str]:
    """Relative path -> file text of the generated project."""
    pkg = f"dsport_{name}"
    table = specs()
    ops_src = "\n\n".join(_op_source(s) for s in table.values())
    cap_lines = "\n".join(
        f'    # "{op}": Capability(dtypes=(torch.bfloat16,), devices=("{name}",), archs=()),' for op in table)
    return {
        "pyproject.toml": textwrap.dedent(f"""\
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "dsport-{name}"
            version = "0.1.0"
            description = "dsport backend '{name}'"
            requires-python = ">=3.10"
            dependencies = ["dsport"]

            # This line is what makes `dsport.resolve("{name}")` find the package.
            [project.entry-points."dsport.backends"]
            {name} = "{pkg}"

            [tool.setuptools]
            packages = ["{pkg}"]
            """),
        f"{pkg}/__init__.py": textwrap.dedent(f'''\
            """dsport backend '{name}': the module dsport loads through the
            dsport.backends entry point (NAME, OPS, available, CAPABILITIES)."""
            from {pkg}.capabilities import CAPABILITIES
            from {pkg}.ops import OPS

            NAME = "{name}"
            DESCRIPTION = "{name}: starts as torch/reference delegates; ported op by op"
            PRECISION = "as the delegated backend until ops are ported"
            __all__ = ["NAME", "DESCRIPTION", "PRECISION", "OPS", "CAPABILITIES", "available"]


            def available() -> tuple[bool, str]:
                """Whether this backend runs here, and why not: check the runtime
                library and the device, e.g. `import torch_{name}` in a try block and
                `torch_{name}.device_count() > 0`, returning the error as the reason."""
                return True, "delegates to torch/reference; replace with a device check"
            '''),
        f"{pkg}/capabilities.py": textwrap.dedent(f'''\
            """What each op of '{name}' can serve. dsport checks the config (device,
            dtype, fp8 format, scale format, arch) against these at resolve time and
            falls back, or fails in strict mode, with the reason. No entry: no limit."""
            import torch  # noqa: F401  (used by the entries once uncommented)

            from dsport.core.capabilities import Capability  # noqa: F401

            CAPABILITIES: dict = {{
            ''') + cap_lines + "\n}\n",
        f"{pkg}/ops.py": textwrap.dedent(f'''\
            """The op table of '{name}'.

            Every op starts as a delegate to the torch backend (the reference where
            torch lacks it). To port an op, replace its body with your kernel call
            and remove its @delegates line; keep the signature (it is the contract
            in dsport.core.ops). Delegates the base cannot serve are left out of OPS,
            so dsport's fallback chain (or strict mode) decides about them.
            """
            import dsport

            # Bound once at import, like any OpTable: calls do no lookup.
            _base = dsport.resolve({{"backend": "torch", "fallback": "fallback", "fallback_chain": ["reference"]}}, validate=False)


            def delegates(fn):
                fn.delegates = True
                return fn


            ''') + ops_src + textwrap.dedent('''

            OPS = {
                name: fn for name, fn in list(globals().items())
                if name in dsport.specs() and callable(fn) and (not getattr(fn, "delegates", False) or name in _base.ops)
            }
            '''),
        "tests/test_conformance.py": textwrap.dedent(f'''\
            """'{name}' against the float reference on every op's quick cases,
            judged by dsport's conformance harness (the same metrics and
            tolerance table as `dsport conformance`). Ops absent from '{name}',
            or outside its declared capabilities, are skipped with the reason."""
            import pytest

            from dsport.backends import reference
            from dsport.conformance.worker import run_case
            from dsport.core.backend import import_backend
            from dsport.core.spec import specs

            BACKEND = import_backend("{pkg}")
            CASES = [(op, c) for op, s in specs().items() for c in s.cases() if "quick" in c.tags]


            @pytest.mark.parametrize("op, case", CASES, ids=[f"{{op}}/{{c.id}}" for op, c in CASES])
            def test_matches_reference(op, case):
                row = run_case(BACKEND, dict(reference.OPS), op, case.id, case_set="quick")
                if row["verdict"] in ("skip", "unsupported"):
                    pytest.skip(f"{{row['verdict']}}: {{row['reason']}}")
                assert row["verdict"] == "pass", f"{{op}}/{{case.id}}: {{row['verdict']}}: {{row['reason']}}"
            '''),
        "README.md": textwrap.dedent(f"""\
            # dsport-{name}

            A dsport backend. Install it next to dsport (`pip install -e .`), then
            `dsport backends` lists `{name}` and `dsport.resolve("{name}")` or
            `backend: {name}` in a dsport YAML config selects it.

            Porting: every op in `{pkg}/ops.py` starts as a delegate. Replace one
            body at a time with the kernel call, drop its `@delegates`, declare its
            limits in `{pkg}/capabilities.py`, run `pytest tests/`.
            """),
    }


def write(name: str, path: str | Path) -> Path:
    if not NAME_RE.match(name) or keyword.iskeyword(name):
        raise ConfigError(f"new-backend: name: expected a lowercase identifier (letters, digits, _), got {name!r}")
    from ..registry import discover

    if name in discover():
        raise ConfigError(f"new-backend: name: {name!r} is already a backend; valid new names exclude {sorted(discover())}")
    root = Path(path) / f"dsport-{name}"
    if root.exists():
        raise ConfigError(f"new-backend: {str(root)!r} already exists; remove it or pick --path")
    for rel, text in render(name).items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return root


def run(args: argparse.Namespace) -> int:
    try:
        root = write(args.name, args.path)
    except ConfigError as e:
        print(f"dsport new-backend: {e}", file=sys.stderr)
        return 2
    print(f"wrote {root}\n  next: pip install -e {root} && pytest {root / 'tests'}\n"
          f"  then port one op at a time in {root / f'dsport_{args.name}' / 'ops.py'}")
    return 0
