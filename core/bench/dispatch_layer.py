"""Benchmark 5: a DeepSeek-shaped decoder layer (MLA + indexer + MoE, FP8
weights) run through the resolved OpTable is within 2% of the same code
calling the torch backend's functions directly.

"Direct" is the same layer code given a plain namespace of the backend's
functions. The OpTable binds each op once at resolve time (validate=False
binds the function itself), so the target measures that dispatch adds
nothing per call; the validating table (every call checked against its
spec) is shown for information. Variants are timed interleaved (the first
slot rotates each round), best of N.
The layer keeps V3.2's per-head shapes (kv_lora 512, rope 64, nope 128,
v 128, index head 128) at a CPU-sized width, head and expert count."""
from __future__ import annotations

import argparse
import time
from types import SimpleNamespace
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from ...backends import torch as torch_backend
from .sparse_vs_dense import sync
from ..model.config import ModelConfig
from ..model.layers import MLA, Batch, Block
from ..registry import resolve

DESCRIPTION = __doc__.splitlines()[0]
TARGET = 1.02


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", type=int, default=384, help="prefill length per sequence")
    p.add_argument("--decode-batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--topk", type=int, default=256, help="index_topk (below --tokens so the sparse path runs)")


def _config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(vocab_size=1024, dim=args.dim, inter_dim=2 * args.dim, moe_inter_dim=256, n_layers=2, n_dense_layers=1,
                       n_heads=args.heads, n_routed_experts=args.experts, n_activated_experts=8, n_expert_groups=8,
                       n_limited_groups=4, q_lora_rank=384, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                       v_head_dim=128, max_seq_len=16384, index_n_heads=16, index_head_dim=128, index_topk=args.topk)


def _init(block: Block, gen: torch.Generator) -> None:
    for name, p in block.named_parameters():
        if p.dtype == torch.float8_e4m3fn:
            p.data.copy_((torch.randn(p.shape, generator=gen) * 64).clamp(-448, 448).to(p.dtype))
        elif name.endswith("weight_scale_inv"):
            p.data.copy_(torch.full(p.shape, 2.0 ** -12))
        else:
            p.data.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5 + (1.0 if "layernorm" in name else 0.0))


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg, dev, dt = _config(args), torch.device("cpu"), torch.float32
    tables = {"direct (namespace of functions)": SimpleNamespace(**torch_backend.OPS),
              "OpTable (validate=False)": resolve("torch", validate=False),
              "OpTable (validate=True, info)": resolve("torch", validate=True)}
    freqs = torch_backend.OPS["yarn_freqs"](cfg.qk_rope_head_dim, cfg.rope_theta, cfg.rope_factor, cfg.original_seq_len,
                                            cfg.beta_fast, cfg.beta_slow)
    blocks = {}
    for name, ops in tables.items():
        blk = Block(ops, cfg, cfg.n_dense_layers, dt)
        _init(blk, torch.Generator().manual_seed(0))
        blocks[name] = blk
    cap = -(-(args.tokens + 1) // MLA.BLOCK_SIZE) * MLA.BLOCK_SIZE
    gen = torch.Generator().manual_seed(1)
    x_pre = torch.randn(args.decode_batch * args.tokens, cfg.dim, generator=gen)
    x_dec = torch.randn(args.decode_batch, cfg.dim, generator=gen)
    best = {n: {"prefill": float("inf"), "decode": float("inf")} for n in blocks}
    with torch.inference_mode():
        for r in range(args.rounds):
            names = list(blocks)
            order = names[r % len(names):] + names[:r % len(names)]   # rotate who goes first each round
            for name in order:  # interleaved, so load drifts hit every variant alike
                blk = blocks[name]
                blk.self_attn.allocate(args.decode_batch, cap, dev, dt)
                sync(dev)
                t0 = time.perf_counter()
                blk(x_pre, None, Batch(0, args.tokens, args.decode_batch, cap, freqs))
                t1 = time.perf_counter()
                blk(x_dec, None, Batch(args.tokens, 1, args.decode_batch, cap, freqs))
                t2 = time.perf_counter()
                best[name]["prefill"] = min(best[name]["prefill"], t1 - t0)
                best[name]["decode"] = min(best[name]["decode"], t2 - t1)
    direct = next(iter(best))
    table = Table(title=f"decoder layer (MLA + indexer + MoE, fp8 weights): dim={cfg.dim}, H={cfg.n_heads}, E={cfg.n_routed_experts}, "
                        f"prefill {args.decode_batch}x{args.tokens} tokens, decode batch {args.decode_batch}; best of {args.rounds}")
    for c in ("ops", "prefill (ms)", "decode step (ms)", "ratio vs direct (prefill / decode)", f"target <= {TARGET}"):
        table.add_column(c)
    out: dict[str, Any] = {"benchmark": "dispatch_layer", "rounds": args.rounds, "times_s": best}
    for name, t in best.items():
        rp, rd = t["prefill"] / best[direct]["prefill"], t["decode"] / best[direct]["decode"]
        verdict = "" if name == direct or "info" in name else ("pass" if max(rp, rd) <= TARGET else "miss")
        if verdict:
            out["ratio_prefill"], out["ratio_decode"], out["verdict"] = rp, rd, verdict
        table.add_row(name, f"{t['prefill'] * 1e3:.1f}", f"{t['decode'] * 1e3:.2f}", f"{rp:.3f} / {rd:.3f}",
                      f"[{'green' if verdict == 'pass' else 'red'}]{verdict}[/]" if verdict else "")
    Console().print(table)
    return out
