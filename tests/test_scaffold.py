"""`dsport new-backend`: the generated package installs, is found through its
entry point, passes its own conformance test unchanged, and that test fails
when a port is wrong."""
import ast
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib

import dsport
from dsport.core.cli import main
from dsport.core.cli.new_backend import write
from dsport.core.errors import ConfigError
from dsport.core.spec import specs

DSPORT_PARENT = str(Path(dsport.__file__).parent.parent)


def fake_install(project: Path, site: Path) -> None:
    """What pip leaves: the package plus a dist-info carrying the entry points
    copied from the generated pyproject.toml."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())
    pkg = meta["tool"]["setuptools"]["packages"][0]
    (site / pkg).symlink_to(project / pkg, target_is_directory=True)
    info = site / f"{meta['project']['name'].replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['project']['name']}\nVersion: 0.1.0\n")
    eps = meta["project"]["entry-points"]["dsport.backends"]
    (info / "entry_points.txt").write_text("[dsport.backends]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))


def load_generated_test(project: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"generated_conformance_{name}", project / "tests" / "test_conformance.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# In-process runs judge a few families to stay quick; the slow test below runs
# the generated file whole, every op.
FAMILIES = ("quant", "norm")


def run_generated(mod) -> dict[str, str]:
    """Run the generated test function over its own cases (ops of FAMILIES):
    id -> pass / skip: reason / fail: message."""
    out = {}
    for op, case in mod.CASES:
        if specs()[op].family not in FAMILIES:
            continue
        key = f"{op}/{case.id}"
        try:
            mod.test_matches_reference(op, case)
            out[key] = "pass"
        except pytest.skip.Exception as e:
            out[key] = f"skip: {e}"
        except AssertionError as e:
            out[key] = f"fail: {e}"
    return out


@pytest.fixture
def site(tmp_path, monkeypatch):
    s = tmp_path / "site"
    s.mkdir()
    monkeypatch.syspath_prepend(str(s))
    yield s
    for m in [m for m in sys.modules if m.startswith("dsport_scaf")]:
        del sys.modules[m]


def test_generated_files_follow_the_specs(tmp_path):
    root = write("scafa", tmp_path)
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert files == {"pyproject.toml", "README.md", "dsport_scafa/__init__.py", "dsport_scafa/ops.py",
                     "dsport_scafa/capabilities.py", "tests/test_conformance.py"}
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["dsport.backends"] == {"scafa": "dsport_scafa"}
    tree = ast.parse((root / "dsport_scafa/ops.py").read_text())
    defs = {f.name: [a.arg for a in f.args.args] for f in tree.body if isinstance(f, ast.FunctionDef) and f.name != "delegates"}
    assert defs == {n: [a.name for a in s.args] for n, s in specs().items()}


def test_generated_backend_passes_its_conformance_unchanged(tmp_path, site, capsys):
    root = write("scafb", tmp_path)
    fake_install(root, site)
    importlib.invalidate_caches()
    assert main(["backends"]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if "scafb" in ln)
    assert "plugin dsport-scafb" in row and " yes " in row
    mod = load_generated_test(root, "scafb")
    results = run_generated(mod)
    # every op of the judged families is served (by delegation) and judged by the harness: none is skipped
    assert results and all(v == "pass" for v in results.values()), {k: v for k, v in results.items() if v != "pass"}
    assert {k.split("/")[0] for k in results} == {op for op, s in specs().items() if s.family in FAMILIES}


def test_generated_conformance_catches_a_bad_port(tmp_path, site):
    """A porter replaces act_quant with a kernel whose scales are 2x off: the
    generated test goes red on act_quant and stays green elsewhere."""
    root = write("scafc", tmp_path)
    ops = root / "dsport_scafc" / "ops.py"
    src = ops.read_text()
    old = "@delegates\ndef act_quant(x, block=128, fmt='e4m3fn', scale_fmt='ue8m0'):"
    assert old in src
    src = src.replace(old, "def act_quant(x, block=128, fmt='e4m3fn', scale_fmt='ue8m0'):\n"
                           "    y, s = _base.act_quant(x, block, fmt, scale_fmt)\n    return y, s * 2\n\n\n"
                           "def _unused(x, block=128, fmt='e4m3fn', scale_fmt='ue8m0'):")
    ops.write_text(src)
    fake_install(root, site)
    importlib.invalidate_caches()
    import dsport_scafc

    assert not getattr(dsport_scafc.OPS["act_quant"], "delegates", False)  # the ported op is in the table
    results = run_generated(load_generated_test(root, "scafc"))
    act = {k: v for k, v in results.items() if k.startswith("act_quant/")}
    failed = {k for k, v in act.items() if v.startswith("fail: ") and "fail: s: " in v}  # the scale output named
    assert failed == set(act) - {"act_quant/T0"}, act  # T0 is empty: nothing to be wrong about
    assert act["act_quant/T0"] == "pass"
    assert all(v == "pass" for k, v in results.items() if k.startswith(("dequant/", "fp8_gemm/")))


def test_bad_names_are_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match="already a backend"):
        write("torch", tmp_path)
    with pytest.raises(ConfigError, match="lowercase identifier"):
        write("My-NPU", tmp_path)
    write("scafd", tmp_path)
    assert main(["new-backend", "scafd", "--path", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_pip_install_then_its_own_pytest(tmp_path):
    """The real thing, about 55 s on 2 busy cores: pip installs the generated
    project (no deps, no network) and its tests pass in a fresh interpreter."""
    root = write("scafe", tmp_path)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(target), str(root)], check=True, capture_output=True)
    assert (target / "dsport_scafe" / "ops.py").exists()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), DSPORT_PARENT])}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
                       env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "failed" not in r.stdout
