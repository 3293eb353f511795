"""``dsport conformance --device DEV``: an absent or unknown device is refused
before anything runs; the move keeps strided, poisoned views strided and
poisoned; ``--device cpu`` goes through the same move-run-return path as a GPU
run, so rows carry the device and pass, and a backend that leaves its outputs
on another device, mutates a device input or ignores the strides there fails."""
import json
import types

import pytest
import torch

from dsport.backends import reference
from dsport.backends import torch as torch_backend
from dsport.conformance import schema
from dsport.conformance.device import DeviceAbsent, inputs_on, resolve, to_device
from dsport.conformance.row import ResultRow
from dsport.conformance.runner import ConformancePlan, run_backend
from dsport.conformance.worker import case_of, run_case
from dsport.core.backend import from_module
from dsport.core.capabilities import Capability, declare, query_of
from dsport.core.cli import main
from dsport.core.errors import ConfigError
from dsport.core.ops.hostile import strided_copy
from dsport.core.spec import get_spec

CPU = resolve("cpu")
#: cases the torch backend passes on the CPU, one of them strided views of poisoned buffers
CASES = [("rms_norm", "tiny"), ("mla_cache_pack", "strided-views"), ("dequant", "strided-views")]
_KEEP: list = []  # the worker caches op tables by module id: keep the modules alive


def _backend(name: str, ops: dict) -> object:
    mod = types.ModuleType(name)
    mod.__dict__.update(NAME=name, OPS=ops, available=lambda: (True, "test backend"))
    _KEEP.append(mod)
    return from_module(mod)


def _with(op: str, wrap) -> object:
    return _backend(f"planted_{op}", {**torch_backend.OPS, op: wrap(torch_backend.OPS[op])})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_is_refused_with_the_reason_before_anything_runs(capsys, monkeypatch):
    from dsport.conformance import runner

    with pytest.raises(DeviceAbsent, match="torch has no CUDA device here: "):
        resolve("cuda")
    monkeypatch.setattr(runner, "run", lambda *a, **k: pytest.fail("a run started although the device is absent"))
    assert main(["conformance", "--device", "cuda:1", "--backends", "torch", "--ops", "rms_norm", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "torch has no CUDA device here" in err and "pass" not in err


@pytest.mark.parametrize("text", ["gpu", "cuda:x", "meta"])
def test_a_device_torch_does_not_know_or_cannot_be_judged_on_is_a_usage_error(text, capsys):
    with pytest.raises(ConfigError, match="--device"):
        resolve(text)
    assert main(["conformance", "--device", text, "--ops", "rms_norm", "--no-progress"]) == 2
    assert "--device" in capsys.readouterr().err


def test_the_move_keeps_offset_strides_and_poisoned_padding_and_shared_storage():
    t = strided_copy(torch.arange(12, dtype=torch.float32).reshape(3, 4))
    moved, note = to_device(t, torch.device("cpu"))
    assert note is None and moved.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
    assert (moved.stride(), moved.storage_offset(), moved.shape) == (t.stride(), t.storage_offset(), t.shape)
    assert torch.equal(moved, t)
    whole = moved.untyped_storage().nbytes() // 4
    assert torch.isnan(moved.as_strided((whole,), (1,), 0)).sum() == whole - t.numel()  # the padding is still NaN
    base = torch.randn(4, 6)
    args, notes = inputs_on({"a": base[:, :3], "b": base[1:, 2:], "k": 3}, torch.device("cpu"))
    assert notes == [] and args["k"] == 3
    assert args["a"].untyped_storage().data_ptr() == args["b"].untyped_storage().data_ptr()  # still one storage


def test_the_capability_query_sees_the_device_the_inputs_were_moved_to():
    spec = get_spec("rms_norm")
    args, _ = inputs_on(case_of("rms_norm", "tiny").inputs(), torch.device("meta"))
    bound = spec.bind(**args)
    q = query_of(spec, bound, spec.validate(bound))
    assert q["device"] == "meta" and Capability(devices=("meta",)).reasons(q) == []
    assert Capability(devices=("cuda",)).reasons(q)


def test_torch_backend_on_device_cpu_passes_and_every_row_names_the_device(tmp_path):
    plan = ConformancePlan(backends=["torch"], cases=[f"{op}/{c}" for op, c in CASES], device=CPU)
    info, rows = run_backend("torch", None, [(op, c) for op, c in CASES], plan)
    assert info.available and [(r.op, r.case, r.verdict) for r in rows] == [(op, c, "pass") for op, c in CASES]
    assert all(r.run_device == CPU.to_json() for r in rows), [r.run_device for r in rows]
    assert all(r.reproduce.endswith("--device cpu") for r in rows)
    from dsport.conformance import report

    doc = report.build_document(rows, {"torch": info}, "dsport conformance --device cpu", "quick", run_device=CPU.to_json())
    assert schema.errors(doc) == [] and doc["environments"][0]["run_device"] == CPU.to_json()
    assert ResultRow.from_json(json.loads(json.dumps(doc["results"][0]))).run_device == CPU.to_json()
    from dsport.conformance.merge import merge

    merged = merge([doc], ["cpu.json"])
    assert schema.errors(merged) == [] and all(r["run_device"] == CPU.to_json() for r in merged["results"])


def test_without_device_nothing_moves_and_rows_carry_no_device():
    row = run_case(from_module(torch_backend), dict(reference.OPS), "rms_norm", "tiny")
    assert row.verdict == "pass" and row.run_device is None and "run_device" not in row.to_json()


def _on_meta(impl):
    return lambda **kw: tuple(o.to("meta") for o in _tuple(impl(**kw)))


def _mutating(impl):
    def run(**kw):
        outs = impl(**kw)
        kw["x"].add_(1)
        return outs
    return run


def _ignores_strides(impl):
    """Reads its input as if it were contiguous from the start of its storage (a raw-pointer kernel)."""
    def run(kv, **kw):
        return impl(kv=kv.as_strided(kv.shape, torch.empty(kv.shape).stride(), 0), **kw)
    return run


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


@pytest.mark.parametrize("op, case, wrap, words", [
    ("rms_norm", "tiny", _on_meta, "came back on meta, the inputs were on cpu"),
    ("rms_norm", "tiny", _mutating, "input 'x' was modified in place"),
    ("mla_cache_pack", "strided-views", _ignores_strides, ""),
])
def test_planted_device_slips_fail_on_device_cpu(op, case, wrap, words):
    row = run_case(_with(op, wrap), dict(reference.OPS), op, case, device=CPU)
    assert row.verdict == "fail" and words in row.reason, (row.verdict, row.reason)
    assert row.run_device == CPU.to_json()


def test_a_backend_limited_to_cuda_stays_unsupported_on_the_cpu():
    impl = declare(Capability(devices=("cuda",)))(lambda **kw: torch_backend.OPS["rms_norm"](**kw))
    row = run_case(_backend("cuda_only", {"rms_norm": impl}), dict(reference.OPS), "rms_norm", "tiny", device=CPU)
    assert row.verdict == "unsupported" and "device" in row.reason, row.reason
