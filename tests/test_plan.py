"""dsport plan: bad input is named, the 671B figures agree with sizes computed
here from the release constants, and the weight plan of a generated FP8
checkpoint agrees with its safetensors files and with what the loader keeps
resident, every difference accounted for."""
from __future__ import annotations

import json
import math

import pytest
import torch

from dsport.core.cli import main
from dsport.core.constants import DEEPSEEK_V32 as V
from dsport.core.model import Model, tiny_config
from dsport.core.model.weights import make_checkpoint
from dsport.core.plan import INDEX_CACHE_BYTES, LATENT_CACHE_BYTES, _weight_kinds, checkpoint_tensors, hardware_memory, plan, resident_bytes, weights
from tests.named_errors import check_named_error

FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)


@pytest.mark.parametrize("kw,arg,fragment", [
    ({"tp": 3}, "--tp", "divisor of n_heads=128"),
    ({"ep": 3}, "--ep", "divisor of n_routed_experts=256"),
    ({"tp": 0}, "--tp", "positive"),
    ({"tp": 8, "ep": 12}, "--ep", "divisor of n_routed_experts"),
    ({"tp": 16, "ep": 32, "context": 0}, "--context", "positive"),
])
def test_bad_degrees_are_named(kw, arg, fragment):
    check_named_error(lambda: plan(V, **kw), "dsport plan", arg, fragment)


def test_degrees_that_do_not_nest_are_named():
    check_named_error(lambda: plan(tiny_config(n_heads=4, n_routed_experts=12), tp=4, ep=6),
                      "dsport plan", "--tp/--ep", "one degree dividing the other")


def test_unknown_hardware_suggests_the_closest_and_the_cli_exits_2(capsys):
    e = check_named_error(lambda: hardware_memory("H20"), "dsport plan", "--hardware", "did you mean 'H200'")
    assert "MI300X" in str(e)
    assert hardware_memory("ascend-910c")[0] == "Ascend-910C"
    assert main(["plan", "671B", "--tp", "8", "--ep", "8", "--hardware", "MI300"]) == 2
    assert "did you mean 'MI300X'" in capsys.readouterr().err
    assert main(["plan", "671B", "--tp", "3"]) == 2


def _fp8_bytes(n: int, k: int) -> int:
    return n * k + math.ceil(n / 128) * math.ceil(k / 128) * 4


def test_671b_per_rank_figures_match_the_release_arithmetic():
    p = plan(V, tp=8, ep=8, context=32768, batch=8)
    moe_layers = V.n_layers - V.n_dense_layers
    expert = 2 * _fp8_bytes(V.moe_inter_dim, V.dim) + _fp8_bytes(V.dim, V.moe_inter_dim)
    assert p.weights["routed experts (FP8 + scales)"] == moe_layers * (V.n_routed_experts // 8) * expert
    h = V.n_heads
    split = (_fp8_bytes(h * V.qk_head_dim, V.q_lora_rank) + _fp8_bytes(h * (V.qk_nope_head_dim + V.v_head_dim), V.kv_lora_rank)
             + _fp8_bytes(V.dim, h * V.v_head_dim)) // 8
    replicated = _fp8_bytes(V.q_lora_rank, V.dim) + _fp8_bytes(V.d_qk, V.dim)
    assert p.weights["attention projections (FP8 + scales)"] == V.n_layers * (split + replicated)
    assert p.weights["embedding + LM head (bf16)"] == 2 * V.vocab_size * V.dim * 2 // 8
    assert p.caches["latent cache (656 B/token/layer)"] == 8 * 32768 * V.n_layers * LATENT_CACHE_BYTES
    assert p.caches["indexer key cache (132 B/token/layer)"] == 8 * 32768 * V.n_layers * INDEX_CACHE_BYTES
    # all ranks together hold the whole model once (experts split, attention split except replicated pieces)
    params = sum(math.prod(t.shape) * n for t, n in _weight_kinds(V) if not t.name.endswith("weight_scale_inv"))
    assert 671.0e9 < params < 672.0e9  # the release's 671B, without its MTP layer
    # data-parallel attention: ep 8 over tp 1 splits the batch over 8 groups, each rank holds all heads
    dp = plan(V, tp=1, ep=8, context=32768, batch=8)
    assert dp.dp == 8 and dp.cache_bytes == p.cache_bytes // 8
    assert dp.weights["attention projections (FP8 + scales)"] > p.weights["attention projections (FP8 + scales)"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("plan-fp8"), tiny_config(), seed=3)


def test_plan_matches_the_checkpoint_files_tensor_by_tensor(ckpt):
    cfg = tiny_config()
    planned = {t.name: t for t in weights(cfg)}
    files, header = checkpoint_tensors(ckpt)
    assert set(planned) == set(files)
    assert all(planned[n].shape == files[n][0] for n in planned)
    # the only dtype differences: make-checkpoint stores 1-D tensors (norms, k_norm bias) in fp32, the release in bf16
    differ = {n for n in planned if planned[n].dtype != files[n][1]}
    assert differ == {n for n, (s, d) in files.items() if len(s) == 1 and d == torch.float32 and planned[n].dtype == torch.bfloat16}
    assert all(files[n][1] == torch.float32 for n in differ) and any("norm" in n for n in differ)
    fp8 = [n for n, t in planned.items() if t.dtype in FP8 or n.endswith("weight_scale_inv")]
    assert all(planned[n].dtype == files[n][1] for n in fp8)
    file_bytes = {n: math.prod(s) * d.itemsize for n, (s, d) in files.items()}
    assert sum(p.stat().st_size for p in ckpt.glob("*.safetensors")) == sum(file_bytes.values()) + header
    assert plan(cfg).weight_bytes == sum(file_bytes.values()) - sum(file_bytes[n] // 2 for n in differ)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(file_bytes.values())


def test_loaded_model_keeps_fp8_as_planned_and_no_dense_copy_after_a_forward(ckpt):
    cfg = tiny_config()
    planned = weights(cfg)
    model = Model.from_pretrained(ckpt, backend="torch")
    res = resident_bytes(model)
    assert res["fp8 weights"] == sum(t.bytes for t in planned if t.dtype in FP8)
    assert res["fp8 scales"] == sum(t.bytes for t in planned if t.name.endswith("weight_scale_inv"))
    # every other tensor is widened to the model's float32 on load (the release stores them bf16: 2x)
    others = [t for t in planned if t.dtype not in FP8 and not t.name.endswith("weight_scale_inv")]
    assert res["other parameters (float32)"] == sum(math.prod(t.shape) * 4 for t in others)
    model(torch.randint(0, cfg.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0)))
    after = resident_bytes(model)
    caches = ("kv_cache", "k_cache", "k_scale", "freqs")
    copies = {k: v for k, v in after.items() if k.startswith("module attribute") and not k.endswith(caches)}
    assert not copies, f"derived copies of weights kept on modules: {copies}"
    assert {k: after[k] for k in res} == res  # the parameters hold what they held after loading
