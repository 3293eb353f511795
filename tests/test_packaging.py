"""The wheel carries every module under one import root, `dsport`, and works
without the source tree: nothing named `core` or `backends` leaks into
site-packages, and each subpackage of the repo is in the wheel."""
import ast
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    # Build from a pristine copy: setuptools reuses an in-tree build/ folder, whose
    # stale contents would hide a subpackage missing from pyproject.toml.
    src = tmp_path_factory.mktemp("src") / "dsport"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "reports"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check", "-w", str(out), str(src)],
                   check=True, capture_output=True)
    (whl,) = out.glob("dsport-*.whl")
    return whl


def test_wheel_has_a_single_import_root(wheel):
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"dsport", next(t for t in tops if t.endswith(".dist-info"))}


def test_every_source_package_is_in_the_wheel(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    skip = {"tests", "build", "dist", ".venv", ".git", ".ci"}
    for init in ROOT.rglob("__init__.py"):
        rel = init.relative_to(ROOT)
        if rel.parts[0] in skip or any(p.startswith(".") or p.endswith(".egg-info") for p in rel.parts):
            continue
        assert f"dsport/{rel.as_posix()}" in names, f"{rel.parent} is a package in the repo but missing from the wheel"


def test_wheel_imports_and_runs_outside_the_source_tree(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    assert not (site / "core").exists() and not (site / "backends").exists()
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import dsport, pkgutil, importlib, sys; "
            f"assert dsport.__file__.startswith({str(site)!r}), dsport.__file__; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(dsport.__path__, 'dsport.') "
            " if not m.name.endswith(('__main__', 'pytest_plugin'))]; "
            "print(dsport.resolve('reference').act_quant.__name__)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "act_quant"
    r = subprocess.run([sys.executable, "-m", "dsport", "backends"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "reference" in r.stdout, r.stderr
    ep = next(site.glob("dsport-*.dist-info")) / "entry_points.txt"
    assert "dsport = dsport.core.cli:main" in ep.read_text()


def _package_imports():
    """(file, line, absolute module, imported names) for every import of a dsport module inside the package,
    relative imports resolved against the importing file."""
    for path in ROOT.glob("**/*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in (".venv", "tests", "build") or ".egg-info" in rel.parts[0]:
            continue
        here = ["dsport", *rel.parent.parts] if rel.name != "__init__.py" or rel.parent.parts else ["dsport"]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                if module.split(".")[0] == "dsport":
                    yield rel.as_posix(), node.lineno, module, [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "dsport":
                        yield rel.as_posix(), node.lineno, a.name, []


def test_the_model_does_not_depend_on_conformance():
    # dependencies point one way: conformance -> model -> ops -> spec; the model's checker lives in conformance/
    offenders = [f"{f}:{n}: {m}" for f, n, m, _ in _package_imports()
                 if f.startswith("core/model/") and (m + ".").startswith("dsport.conformance.")]
    assert not offenders, offenders


def test_no_module_imports_another_modules_private_names():
    # a name with a leading underscore is its module's own business (dunders such as __version__ are public)
    offenders = [f"{f}:{n}: from {m} import {name}" for f, n, m, names in _package_imports()
                 for name in names if name.startswith("_") and not name.startswith("__")]
    assert not offenders, offenders


def test_the_import_scan_sees_the_package():
    # the two checks above pass vacuously if the scan finds nothing
    seen = {m for _, _, m, _ in _package_imports()}
    assert {"dsport.core.spec", "dsport.core.backend", "dsport.conformance.worker"} <= seen
