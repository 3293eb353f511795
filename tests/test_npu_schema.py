"""Every torch_npu call the npu adapters make, and every contract model's
signature, checked against the op schemas registered by the real torch-npu
wheel (read as a zip from the package index's file, never installed).

The wheel (43.6 MB, pinned by version and sha256) is cached in
``$DSPORT_WHEEL_CACHE`` (default ``~/.cache/dsport/wheels``); the first run
downloads it with ``pip download --require-hashes``. Without network and
without a cached copy the tests skip, saying so.
"""
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from dsport.npu_kernels import contract_models as M
from dsport.npu_kernels.ascend_checks import main as checks_main, recorded_calls
from dsport.npu_kernels import schema as S

CACHE = pathlib.Path(os.environ.get("DSPORT_WHEEL_CACHE", pathlib.Path.home() / ".cache" / "dsport" / "wheels"))


@pytest.fixture(scope="module")
def schemas():
    wheel = CACHE / S.WHEEL
    if not wheel.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        req = CACHE / "torch-npu.req"
        req.write_text(f"torch-npu=={S.WHEEL_VERSION} --hash=sha256:{S.WHEEL_SHA256}\n")
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11", "--require-hashes",
                            "-r", str(req), "-d", str(CACHE), "-q"], capture_output=True, text=True, timeout=600)
        if r.returncode != 0 or not wheel.exists():
            pytest.skip(f"torch-npu {S.WHEEL_VERSION} wheel neither cached in {CACHE} nor downloadable: "
                        f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
    assert S.sha256(wheel) == S.WHEEL_SHA256, f"{wheel} is not the pinned wheel"
    return S.schemas_from_wheel(wheel)


def test_the_wheel_ships_the_schemas_of_every_modelled_op(schemas):
    assert len(schemas) > 1000  # the whole op plugin, not a fragment
    for name in M.MODELS:
        assert name in schemas, f"{name} is not registered by torch-npu {S.WHEEL_VERSION}"


@pytest.mark.parametrize("name", sorted(M.MODELS))
def test_contract_model_signature_is_the_schema(schemas, name):
    assert S.check_signature(schemas[name], M.MODELS[name]) == []


def test_every_adapter_call_matches_its_schema(schemas):
    calls = recorded_calls()
    assert {c[0] for c in calls} == set(M.MODELS)  # every modelled op is exercised
    layouts = {(c[0], c[2].get("layout_query"), c[2].get("layout_kv", c[2].get("layout_key"))) for c in calls}
    assert ("npu_sparse_flash_attention", "TND", "PA_BSND") in layouts and ("npu_lightning_indexer", "TND", "PA_BSND") in layouts
    problems = [(name, p) for name, args, kwargs in calls for p in S.check_call(schemas[name], args, kwargs)]
    assert problems == []


def test_the_checker_catches_calls_written_from_the_stale_docstrings(schemas):
    sfa = schemas["npu_sparse_flash_attention"]
    t = torch.zeros(1)
    # the docstring's prototype: sparse_block_size positional after scale_value
    assert any("positional" in p for p in S.check_call(sfa, (t, t, t, t, 0.1, 1), {}))
    assert any("unknown argument 'return_lse'" in p for p in S.check_call(sfa, (t, t, t, t, 0.1), {"return_lse": True}))
    assert any("required argument 'scale_value'" in p for p in S.check_call(sfa, (t, t, t, t), {}))
    assert any("schema type str" in p for p in S.check_call(sfa, (t, t, t, t, 0.1), {"layout_kv": 3}))
    li = schemas["npu_lightning_indexer"]
    assert S.check_call(li, (t, t, t), {"return_value": True}) == []
    assert any("return_values" in p for p in S.check_call(li, (t, t, t), {"return_values": True}))  # the README's name


def test_a_model_departing_from_the_schema_is_named(schemas):
    def npu_rms_norm(self, gamma, eps=1e-06):
        raise AssertionError
    assert S.check_signature(schemas["npu_rms_norm"], npu_rms_norm) != []

    def npu_add_rms_norm(x1, x2, gamma, epsilon=1e-05):
        raise AssertionError
    assert S.check_signature(schemas["npu_add_rms_norm"], npu_add_rms_norm) == ["'epsilon' default 1e-05, schema 1e-06"]


def test_the_ascend_check_command_reads_a_wheel(schemas, capsys, tmp_path):
    out = tmp_path / "schemas.json"
    assert checks_main(["schemas", "--wheel", str(CACHE / S.WHEEL), "--json", str(out)]) == 0
    assert '"ok": true' in out.read_text() and '"problems": {}' in out.read_text()
    assert checks_main(["schemas", "--wheel", str(tmp_path / "missing.whl")]) == 2
