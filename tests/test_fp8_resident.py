"""FP8 weights stay FP8 in the model: after a prefill and a decode step the
loaded model holds exactly the checkpoint's tensors (FP8 codes and scales at
their file size, the rest widened to the model dtype) and nothing derived
from them; the routed experts compute on the FP8 weights as stored, through
the per-expert Linear path or the grouped FP8 GEMMs (both layouts), and never
read an expert no token chose."""
from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

import dsport
from dsport.core.model import Model, tiny_config
from dsport.core.model.weights import make_checkpoint
from dsport.core.plan import checkpoint_tensors

FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
CACHES = {"MLA.kv_cache", "Indexer.k_cache", "Indexer.k_scale", "Model.freqs"}
"""What a module may hold besides its parameters: the KV caches and the RoPE table."""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("fp8-resident"), tiny_config(n_layers=2), seed=4)


def resident(model: torch.nn.Module) -> tuple[dict[str, int], dict[str, int]]:
    """(bytes of parameters and buffers by kind, bytes of every other tensor a module holds by
    'Class.attr'), each storage counted once, parameters first."""
    seen: set[int] = set()

    def fresh(t: torch.Tensor) -> int:
        key = t.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return t.untyped_storage().nbytes()

    params: dict[str, int] = defaultdict(int)
    for name, p in [*model.named_parameters(), *model.named_buffers()]:
        kind = "fp8" if p.dtype in FP8 else "scales" if name.endswith("weight_scale_inv") else "other"
        params[kind] += fresh(p)
    held: dict[str, int] = defaultdict(int)
    for m in model.modules():
        for attr, v in vars(m).items():
            if attr in ("_parameters", "_buffers", "_modules"):
                continue
            values = v.values() if isinstance(v, dict) else v if isinstance(v, (tuple, list)) else (v,)
            for t in values:
                if isinstance(t, torch.Tensor) and (n := fresh(t)):
                    held[f"{type(m).__name__}.{attr}"] += n
    return dict(params), dict(held)


@pytest.mark.parametrize("moe", ["experts", "grouped"])
def test_resident_bytes_after_prefill_and_decode_are_the_checkpoint_files(ckpt, moe):
    files, header = checkpoint_tensors(ckpt)
    assert sum(p.stat().st_size for p in ckpt.glob("*.safetensors")) == header + sum(
        math.prod(s) * d.itemsize for s, d in files.values())
    fp8_file = sum(math.prod(s) * d.itemsize for s, d in files.values() if d in FP8)
    scale_file = sum(math.prod(s) * d.itemsize for n, (s, d) in files.items() if n.endswith("weight_scale_inv"))
    other_numel = sum(math.prod(s) for n, (s, d) in files.items() if d not in FP8 and not n.endswith("weight_scale_inv"))

    model = Model.from_pretrained(ckpt, backend="torch", moe=moe)
    assert model.cfg.fp8_weights and fp8_file > 0
    prompt = torch.randint(0, 512, (1, 8), generator=torch.Generator().manual_seed(0))
    logits = model(prompt)
    model(logits[:, -1:].argmax(-1), 8)

    params, held = resident(model)
    assert params["fp8"] == fp8_file          # FP8 codes held once, at their size in the files
    assert params["scales"] == scale_file
    assert params["other"] == other_numel * 4  # the rest widened to the model's float32, nothing more
    extra = {k: v for k, v in held.items() if k not in CACHES}
    assert not extra, f"tensors kept on modules beyond the caches (copies of weights?): {extra}"


def _recording(backend: str) -> tuple[dsport.OpTable, list[str]]:
    base = dsport.resolve(backend)
    calls: list[str] = []

    def wrap(name, fn):
        def call(*a, **k):
            calls.append(name)
            return fn(*a, **k)
        return call

    return dsport.OpTable({n: wrap(n, f) for n, f in base.ops.items()}, dict(base.served_by), []), calls


def _dense_experts(moe, x: torch.Tensor, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The routed experts in float64 from the dequantized weights, written out here (no activation quantization)."""
    ref = dsport.resolve("reference")
    y = torch.zeros(x.shape, dtype=torch.float64)
    for e in sorted(set(ids[ids >= 0].tolist())):
        t, j = torch.nonzero(ids == e, as_tuple=True)
        ex = moe.experts[e]
        w1, w3, w2 = (ref.weight_dequant(p.weight, p.weight_scale_inv).double() for p in (ex.gate_proj, ex.up_proj, ex.down_proj))
        xt = x[t].double()
        y.index_add_(0, t, w[t, j].double()[:, None] * ((torch.nn.functional.silu(xt @ w1.T) * (xt @ w3.T)) @ w2.T))
    return y


@pytest.mark.parametrize("layout,tokens,experts", [("masked", 3, None), ("contiguous", 300, (0, 1, 2, 3))])
def test_grouped_fp8_layouts_match_the_dequantized_experts_and_skip_unchosen_ones(ckpt, layout, tokens, experts):
    ops, calls = _recording("torch")
    model = Model.from_pretrained(ckpt, ops=ops, moe="grouped")
    moe = model.model.layers[1].mlp
    gen = torch.Generator().manual_seed(7)
    e, k = model.cfg.n_routed_experts, model.cfg.n_activated_experts
    if experts is None:  # decode-like: a few tokens, distinct experts, expert 5 left out
        pool = torch.tensor([i for i in range(e) if i != 5])
        ids = torch.stack([pool[torch.randperm(pool.numel(), generator=gen)[:k]] for _ in range(tokens)]).int()
    else:  # prefill-like: hundreds of rows on few experts
        ids = torch.tensor(experts, dtype=torch.int32).repeat(tokens, 1)
    ids[0, -1] = -1  # a slot on another rank
    w = torch.rand(tokens, k, generator=gen) + 0.1
    w[0, -1] = float("nan")  # the -1 slot's weight is never read
    x = torch.randn(tokens, model.cfg.dim, generator=gen)
    unchosen = sorted(set(range(e)) - set(ids[ids >= 0].tolist()))
    for i in unchosen:  # SPEC §10: an expert no token chose may hold anything
        for p in (moe.experts[i].gate_proj, moe.experts[i].up_proj, moe.experts[i].down_proj):
            p.weight.data.view(torch.uint8).fill_(0xFF)
            p.weight_scale_inv.data.fill_(float("nan"))

    with torch.inference_mode():
        calls.clear()
        grouped = moe.routed(x, ids, w)
        used = set(calls)
        per_expert = moe._chosen_experts(x, ids, w)
    assert f"moe_grouped_fp8_gemm_{layout}" in used and "moe_experts" not in used and "weight_dequant" not in used
    assert torch.isfinite(grouped).all() and torch.isfinite(per_expert).all()
    torch.testing.assert_close(grouped, per_expert, rtol=1e-5, atol=1e-5)  # the same FP8 arithmetic, row by row
    want = _dense_experts(moe, x, ids, w)
    got = grouped.double()
    cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
    # x and h each go through e4m3 (3 mantissa bits, relative RMS error ~ 2^-4 / sqrt(3)): ~5% RMS in all, cos ~ 0.9987;
    # a wrong expert, a missing scale or a dropped slot falls far below
    assert cos > 0.995 and (got - want).abs().max() < 0.25 * want.abs().max(), (cos, (got - want).abs().max())


def test_moe_fp8_benchmark_runs_both_paths(tmp_path):
    import json

    from dsport.core.cli import main

    out = tmp_path / "b.json"
    assert main(["bench", "--json", str(out), "moe_fp8", "--tokens", "8", "--experts", "4", "--topk", "2", "--dim", "128",
                 "--inter", "128", "--repeats", "1", "--no-peak"]) == 0
    got = json.loads(out.read_text())
    assert got["layout"] == "masked" and got["dense_copy_bytes"] == 3 * 4 * 128 * 128 * 4
    assert got["cosine"] > 0.99 and all(v > 0 for v in got["seconds"].values())
