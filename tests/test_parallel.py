"""Tensor and expert parallelism on this machine: gloo worlds of 2 and 4 CPU
processes (torchrun) against one process on the same bf16 checkpoint, the
bytes each rank read against the memory plan's per-rank shares, a planted
bug that must break the comparison, the dispatch/combine contract composed
in one process, and the named errors of bad degrees."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsport.core.config import from_mapping
from dsport.core.errors import ConfigError, ValidationError
from dsport.core.model import Model, tiny_config
from dsport.core.model import parallel
from dsport.core.model.launch import main as launch
from dsport.core.model.weights import make_checkpoint, scan
from dsport.core.plan import WeightTensor, rank_bytes, split_of
from dsport.core.registry import resolve

WORKER = Path(__file__).with_name("parallel_worker.py")
CFG = tiny_config(n_layers=2, fp8_weights=False)
RUN = ["--prompt", "24", "--batch", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("bf16"), CFG, seed=2)


@pytest.fixture(scope="module")
def one_process(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "logits.pt"
    assert launch([str(ckpt), *RUN, "--backend", "torch", "--out", str(out)]) == 0
    return torch.load(out)


def _world(ckpt, tmp_path, tp: int, ep: int, plant: str | None = None, backend: str = "torch") -> dict:
    cfg = tmp_path / "parallel.yaml"
    cfg.write_text(f"backend: {backend}\nparallel: {{tp: {tp}, ep: {ep}}}\n")
    out = tmp_path / "logits.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={max(tp, ep)}", str(WORKER),
           str(ckpt), *RUN, "--config", str(cfg), "--out", str(out)] + (["--plant", plant] if plant else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return torch.load(out)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).flatten()


def _planned_bytes(ckpt, tp: int, ep: int) -> int:
    """One rank's share of the checkpoint, by the memory plan's split rules."""
    return sum(rank_bytes(WeightTensor(n, e.shape, e.dtype, split_of(n)), CFG, tp, ep) for n, e in scan(ckpt).items())


@pytest.mark.slow  # ~10-15 s a world: torchrun starts 2 or 4 Python processes
@pytest.mark.parametrize("tp,ep", [(2, 1), (1, 2), (2, 2), (2, 4)], ids=["tp2", "ep2", "tp2xep2", "tp2xep4"])
def test_parallel_logits_equal_one_process(ckpt, one_process, tmp_path, tp, ep):
    """max(tp, ep) gloo processes give the logits of one process at every position, and
    every rank read exactly its share of the checkpoint (tp2xep4: two data-parallel
    attention groups of two tensor-parallel ranks, experts over all four)."""
    got = _world(ckpt, tmp_path, tp, ep)
    cos = _cos(got["logits"], one_process["logits"])
    assert cos.numel() == 2 * 24 and cos.min() > 0.9999, cos
    assert got["loaded_bytes"] == [_planned_bytes(ckpt, tp, ep)] * max(tp, ep)
    assert one_process["loaded_bytes"] == [_planned_bytes(ckpt, 1, 1)]
    assert got["loaded_bytes"][0] < one_process["loaded_bytes"][0]


@pytest.mark.slow
def test_fp8_shards_of_whole_scale_blocks_equal_one_process(tmp_path):
    """An FP8 checkpoint whose shards are whole 128-blocks (inter 512, shared expert 256 over tp=2):
    weights and their scales sliced together give one process's logits. On the reference backend
    (float64 results): the torch backend's fp8_gemm returns bf16, as its contract (DeepGEMM's) says,
    so each rank's partial sum of a row-parallel layer is rounded to bf16 before the all-reduce, and
    the next act_quant's FP8 rounding amplifies the difference (minimum cosine 0.998 in the world; the
    same split of o_proj and down_proj in one process, two bf16 partials summed, gives 0.9976)."""
    cfg = tiny_config(n_layers=2, inter_dim=512, moe_inter_dim=256)
    ckpt = make_checkpoint(tmp_path / "fp8", cfg, seed=2)
    one = tmp_path / "one.pt"
    assert launch([str(ckpt), *RUN, "--backend", "reference", "--out", str(one)]) == 0
    got = _world(ckpt, tmp_path, 2, 2, backend="reference")
    assert _cos(got["logits"], torch.load(one)["logits"]).min() > 0.9999999
    assert got["loaded_bytes"] == [_planned_bytes(ckpt, 2, 2)] * 2  # FP8 weights and scales: each rank its blocks


@pytest.mark.slow
def test_planted_expert_swap_breaks_the_comparison(ckpt, one_process, tmp_path):
    """The check can fail: ranks that load each other's experts give other logits."""
    got = _world(ckpt, tmp_path, 1, 2, plant="swap-experts")
    assert _cos(got["logits"], one_process["logits"]).min() < 0.99


def test_dispatch_compute_combine_equals_all_experts_in_one_process():
    """The op contract composed as ranks would run it, in one process: dispatch to 4
    ranks, each rank's experts on its block (local ids), combine == moe_experts over
    all experts."""
    ops = resolve("torch")
    gen = torch.Generator().manual_seed(0)
    t, d, i, e, k, ranks = 20, 32, 16, 16, 4, 4
    x = torch.randn(t, d, generator=gen)
    ids = torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(t)]).int()
    ids[3, 1] = -1
    w = torch.rand(t, k, generator=gen)
    w1, w3 = torch.randn(e, i, d, generator=gen) * 0.2, torch.randn(e, i, d, generator=gen) * 0.2
    w2 = torch.randn(e, d, i, generator=gen) * 0.2
    send_x, send_ids, send_w, counts, src = ops.moe_dispatch(x, ids, w, ranks, e // ranks)
    assert counts.tolist() == [int(((ids // (e // ranks)) == r).any(1).sum()) for r in range(ranks)]
    back = torch.zeros_like(send_x)
    for r in range(ranks):
        n, local = int(counts[r]), slice(r * e // ranks, (r + 1) * e // ranks)
        back[r, :n] = ops.moe_experts(send_x[r, :n], send_ids[r, :n], send_w[r, :n], w1[local], w3[local], w2[local])
    torch.testing.assert_close(ops.moe_combine(back, src), ops.moe_experts(x, ids, w, w1, w3, w2), rtol=1e-5, atol=1e-5)


def test_parallel_config_values_are_checked():
    assert (from_mapping({"parallel": {"tp": 2, "ep": 4}}).tp, from_mapping({"parallel": {"ep": 4}}).ep) == (2, 4)
    assert from_mapping({"parallel": {"tp": 2}}).to_mapping()["parallel"] == {"tp": 2, "ep": 1}
    for bad, msg in (({"tp": 0}, "'parallel.tp': expected a positive tensor-parallel degree \\(an integer\\), got 0"),
                     ({"ep": "4"}, "'parallel.ep': expected a positive expert-parallel degree \\(an integer\\), got '4'"),
                     ({"tp": 2, "ep": 3}, "one degree dividing the other .* got tp=2, ep=3"), ({"pp": 2}, "unknown name 'pp'"),
                     ([2, 4], "expected a mapping")):
        with pytest.raises(ConfigError, match=msg):
            from_mapping({"parallel": bad})


def test_degrees_that_do_not_fit_the_model_are_named():
    ops = resolve("reference", validate=False)
    with pytest.raises(ValidationError, match=r"parallel.*parallel\.tp.*n_heads=4"):
        Model(CFG, ops, parallel=parallel.Parallel(parallel.Layout(8, 1, 0), None))
    with pytest.raises(ValidationError, match=r"parallel.*parallel\.ep.*n_routed_experts=16"):
        Model(CFG, ops, parallel=parallel.Parallel(parallel.Layout(1, 32, 0), None))
    # FP8 weights: a shard must own whole 128x128 scale blocks (inter_dim 384 / 2 = 192 does not)
    with pytest.raises(ConfigError, match="384 over tp=2 gives shards of 192, not a multiple of the FP8 weight block 128"):
        Model(tiny_config(n_layers=2), ops, parallel=parallel.Parallel(parallel.Layout(2, 1, 0), None))
    os.environ.pop("WORLD_SIZE", None)
    with pytest.raises(ConfigError, match=r"needs a world of max\(tp, ep\) = 4 processes, WORLD_SIZE is 1"):
        parallel.init(2, 4)


def test_a_rank_names_checkpoint_problems_by_the_checkpoint_names(ckpt, tmp_path):
    """Rank 1 of EP=2 holds global experts 8..15 as experts.0..7: a missing expert 9 tensor is
    named as the checkpoint names it, and a tensor no rank reads is still unexpected."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from dsport.core.model.weights import CheckpointError, load_weights

    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    gone = "model.layers.1.mlp.experts.9.up_proj.weight"
    shard = bad / index["weight_map"].pop(gone)
    tensors = load_file(shard)
    del tensors[gone]
    tensors["model.layers.1.mlp.bogus.weight"] = torch.zeros(2)
    index["weight_map"]["model.layers.1.mlp.bogus.weight"] = shard.name
    save_file(tensors, shard)
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    model = Model(CFG, resolve("torch"), parallel=parallel.Parallel(parallel.Layout(1, 2, 1), None))
    with pytest.raises(CheckpointError, match=r"missing tensors: \['model\.layers\.1\.mlp\.experts\.9\.up_proj\.weight'\].*"
                                              r"unexpected tensors: \['model\.layers\.1\.mlp\.bogus\.weight'\]"):
        load_weights(model, bad)
    load_weights(model, ckpt)  # the intact checkpoint loads on this rank: its experts.1 is global expert 9
    original = load_file(ckpt / scan(ckpt)[gone].shard)[gone]
    torch.testing.assert_close(model.model.layers[1].mlp.experts[1].up_proj.weight, original.float())
