"""``dsport export-onnx``: the exported prefill graph loads in onnx.checker, runs in ONNX Runtime, calls
dsport ops as local functions, keeps FP8 weights as FP8 initializers, and its logits match the torch
backend's — past index_topk too — and a corrupted function makes that match fail. ``--decode``: one step
with the caches as inputs and outputs, matched against the torch backend's decode after a prefill."""
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
    assert {"rms_norm", "layer_norm", "rope", "indexer_logits", "topk_select", "sparse_mla_prefill",
            "moe_gate", "moe_experts"} <= called  # layer_norm: the indexer's key side, written into its cache
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


def test_export_past_index_topk_matches_torch_at_every_position(bf16_export, tmp_path):
    # past index_topk the selection depends on the indexer's keys: they must be the run's, not the traced prompt's
    ckpt = bf16_export[0]
    seq = tiny_config().index_topk + 16
    res = export.export_prefill(ckpt, tmp_path / "long.onnx", seq=seq)
    tokens = export.prompt(tiny_config().vocab_size, seq, export.TRACE_SEED + 1)
    cos = export.per_position_cosine(export.run_exported(res.path, tokens), export.torch_logits(ckpt, tokens))
    assert cos.numel() == seq and cos.min().item() > 0.9999, cos


def _row(name: str, cache: torch.Tensor, pos: int) -> torch.Tensor:
    """The cache row of position ``pos`` (batch 0): the latent cache is [blocks, 64, 1, W], the indexer's [1, capacity, ...]."""
    return cache.reshape(-1, cache.shape[-1])[pos] if name.endswith("kv_cache") else cache[0, pos]


def _others(name: str, cache: torch.Tensor, pos: int) -> torch.Tensor:
    flat = cache.reshape(-1, cache.shape[-1]) if name.endswith("kv_cache") else cache[0]
    return torch.cat([flat[:pos].reshape(-1), flat[pos + 1:].reshape(-1)])


def test_bf16_decode_step_matches_torch_after_a_prefill(bf16_export, tmp_path):
    ckpt = bf16_export[0]
    seq = tiny_config().index_topk + 8  # the step's top-k is a real choice among seq + 1 keys
    res = export.export_decode(ckpt, tmp_path / "step.onnx", seq=seq)
    m = onnx.load(str(res.path))
    names = [i.name for i in m.graph.input]
    assert names[0] == "tokens" and {"past.0.kv_cache", "past.1.index_k_cache"} <= set(names)
    assert [o.name for o in m.graph.output] == ["logits", *(n.replace("past.", "present.") for n in names[1:])]
    vocab = tiny_config().vocab_size
    tokens, token = export.prompt(vocab, seq, export.TRACE_SEED + 1), export.prompt(vocab, 1, export.TRACE_SEED + 2)
    before, want, after = export.decode_after_prefill(ckpt, tokens, token)
    got, present = export.run_exported_decode(res.path, token, before)
    assert got.shape == want.shape == (1, 1, vocab)
    assert export.per_position_cosine(got, want).min().item() > 0.9999
    assert set(present) == set(after)
    for n in after:
        # the step writes its own row, as the torch backend's step does, and leaves every other row as it came in
        torch.testing.assert_close(_row(n, present[n], seq), _row(n, after[n], seq), rtol=1e-4, atol=1e-4, msg=n)
        assert _row(n, present[n], seq).abs().sum() > 0, n
        assert torch.equal(_others(n, present[n], seq), _others(n, before[n], seq)), n


def test_fp8_decode_step_through_the_cli_keeps_fp8_caches(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ckpt", replace(tiny_config(), n_layers=2), seed=1, shards=1)
    assert main(["export-onnx", str(ckpt), str(tmp_path / "step.onnx"), "--seq", "6", "--decode"]) == 0
    out = capsys.readouterr().out
    assert "decode step at position 6" in out and "every written cache must exceed 0.9999" in out and out.rstrip().endswith("pass")
    m = onnx.load(str(tmp_path / "step.onnx"))
    kinds = {i.name: onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type) for i in [*m.graph.input, *m.graph.output]}
    assert kinds["past.0.index_k_cache"] == kinds["present.0.index_k_cache"] == "FLOAT8E4M3FN"


def test_dense_v3_prefill_and_decode_match_torch(tmp_path):
    # no indexer: dense absorbed attention reads the paged latent cache back after writing it
    ckpt = make_checkpoint(tmp_path / "ckpt", replace(tiny_config(), fp8_weights=False, n_layers=2, index_n_heads=0), seed=5, shards=1)
    vocab = tiny_config().vocab_size
    tokens, token = export.prompt(vocab, SEQ, export.TRACE_SEED + 1), export.prompt(vocab, 1, export.TRACE_SEED + 2)
    res = export.export_prefill(ckpt, tmp_path / "prefill.onnx", seq=SEQ)
    assert export.per_position_cosine(export.run_exported(res.path, tokens), export.torch_logits(ckpt, tokens)).min().item() > 0.9999
    res = export.export_decode(ckpt, tmp_path / "step.onnx", seq=SEQ)
    before, want, after = export.decode_after_prefill(ckpt, tokens, token)
    got, present = export.run_exported_decode(res.path, token, before)
    assert set(present) == {"0.kv_cache", "1.kv_cache"}
    assert export.per_position_cosine(got, want).min().item() > 0.9999
    assert min(export.cache_cosine(present[n], after[n]) for n in after) > 0.9999


def test_export_refuses_a_decode_length(tmp_path, capsys):
    assert main(["export-onnx", str(tmp_path), str(tmp_path / "m.onnx"), "--seq", "1"]) == 2
    assert "--seq must be >= 2" in capsys.readouterr().err


def test_export_reads_the_onnx_section_of_a_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("onnx: {threads: one}\n")
    assert main(["export-onnx", str(tmp_path), str(tmp_path / "m.onnx"), "--config", str(bad)]) == 2
    assert "onnx.threads: expected int, got str 'one'" in capsys.readouterr().err
