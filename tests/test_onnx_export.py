"""``dsport export-onnx``: the exported prefill graph loads in onnx.checker, runs in ONNX Runtime, calls
dsport ops as local functions, keeps FP8 weights as FP8 initializers, and its logits match the torch
backend's — and a corrupted function makes that match fail."""
from __future__ import annotations

from dataclasses import replace

import onnx
import pytest
import torch
from onnx import helper

onnx_backend = pytest.importorskip("dsport.backends.onnx")
if onnx_backend._IMPORT_ERROR:
    pytest.skip(f"onnx extra not installed: {onnx_backend._IMPORT_ERROR}", allow_module_level=True)

from dsport.backends.onnx import export  # noqa: E402
from dsport.core.cli import main  # noqa: E402
from dsport.core.model.config import tiny_config  # noqa: E402
from dsport.core.model.weights import make_checkpoint  # noqa: E402

SEQ = 8


@pytest.fixture(scope="module")
def bf16_export(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx_export")
    ckpt = make_checkpoint(d / "ckpt", replace(tiny_config(), fp8_weights=False, n_layers=2), seed=3, shards=1)
    res = export.export_prefill(ckpt, d / "model.onnx", seq=SEQ)
    tokens = export.prompt(tiny_config().vocab_size, SEQ, export.TRACE_SEED + 1)  # not the traced prompt
    return ckpt, res, tokens, export.torch_logits(ckpt, tokens)


def test_bf16_export_matches_torch_at_every_position(bf16_export):
    ckpt, res, tokens, want = bf16_export
    m = onnx.load(str(res.path))
    called = {n.op_type.rsplit("_", 1)[0] for n in m.graph.node if n.domain == export.DOMAIN}
    # the indexer's key side (layer_norm, its rope and act_quant) is absent: its cache write goes through a
    # view the tracer drops, and with SEQ <= index_topk the selection does not depend on it (see ExportLimit)
    assert {"rms_norm", "rope", "indexer_logits", "topk_select", "sparse_mla_prefill",
            "moe_gate", "moe_experts"} <= called
    assert {f.name for f in m.functions} == {n.op_type for n in m.graph.node if n.domain == export.DOMAIN}
    cos = export.per_position_cosine(export.run_exported(res.path, tokens), want)
    assert cos.numel() == SEQ and cos.min().item() > 0.9999, cos


def test_planted_broken_function_fails_the_match(bf16_export, tmp_path):
    ckpt, res, tokens, want = bf16_export
    m = onnx.load(str(res.path))
    rope = next(f for f in m.functions if f.name.startswith("rope"))
    del rope.node[:]
    rope.node.append(helper.make_node("Identity", [rope.input[0]], [rope.output[0]]))  # "forgets" to rotate
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    cos = export.per_position_cosine(export.run_exported(bad, tokens), want)
    assert cos.min().item() < 0.9999


def test_fp8_export_keeps_fp8_initializers_and_matches_the_eager_onnx_model(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ckpt", replace(tiny_config(), n_layers=2), seed=1, shards=1)
    assert main(["export-onnx", str(ckpt), str(tmp_path / "m.onnx"), "--seq", "6"]) == 0
    out = capsys.readouterr().out
    assert "onnx.checker: ok" in out and "vs eager onnx: every position must exceed 0.9999" in out and out.rstrip().endswith("pass")
    m = onnx.load(str(tmp_path / "m.onnx"))
    kinds = {onnx.TensorProto.DataType.Name(t.data_type) for t in m.graph.initializer}
    assert "FLOAT8E4M3FN" in kinds
    assert any(f.name.startswith("fp8_gemm") for f in m.functions)


def test_export_refuses_a_prompt_past_index_topk(bf16_export, tmp_path, capsys):
    ckpt = bf16_export[0]
    too_long = tiny_config().index_topk + 1
    assert main(["export-onnx", str(ckpt), str(tmp_path / "m.onnx"), "--seq", str(too_long)]) == 2
    assert "index_topk" in capsys.readouterr().err


def test_export_refuses_a_decode_length(tmp_path, capsys):
    assert main(["export-onnx", str(tmp_path), str(tmp_path / "m.onnx"), "--seq", "1"]) == 2
    assert "--seq must be >= 2" in capsys.readouterr().err
