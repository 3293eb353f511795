"""Benchmark 4: moe_experts (2048 tokens, 64 experts, top-8, dim 1024,
inter 512) reaches at least 60% of the FLOP/s of one dense matmul with the
same total FLOPs.

Same FLOPs: 6 * T * k * dim * inter = 2 * (T*k) * dim * (3*inter), i.e. one
[T*k, dim] x [dim, 3*inter] GEMM (what the experts would cost if every row went
to one expert with w1|w3|w2 fused). Both sides run in the same dtype; routing
is uniform random (k distinct experts per token), load spread reported."""
from __future__ import annotations

import argparse
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from ...backends.torch import moe, policy
from .sparse_vs_dense import timed

DESCRIPTION = __doc__.splitlines()[0]
TARGET = 0.60
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--topk", type=int, default=8)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--inter", type=int, default=512)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="default: bfloat16 where half-precision matmuls are fast, else float32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def run(args: argparse.Namespace) -> dict[str, Any]:
    dev = torch.device(args.device)
    dt = DTYPES[args.dtype] if args.dtype else policy.matmul_dtype(dev, torch.bfloat16)
    t, e, k, d, i = args.tokens, args.experts, args.topk, args.dim, args.inter
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(t, d, generator=gen).to(dt).to(dev)
    w1, w3 = ((torch.randn(e, i, d, generator=gen) * d ** -0.5).to(dt).to(dev) for _ in range(2))
    w2 = (torch.randn(e, d, i, generator=gen) * i ** -0.5).to(dt).to(dev)
    ids = torch.rand(t, e, generator=gen).topk(k, dim=-1).indices.to(torch.int32).to(dev)
    wts = torch.rand(t, k, generator=gen).to(dev)
    a = torch.randn(t * k, d, generator=gen).to(dt).to(dev)
    b = torch.randn(d, 3 * i, generator=gen).to(dt).to(dev)
    flops = 6.0 * t * k * d * i
    moe_s = timed(lambda: moe.moe_experts(x, ids, wts, w1, w3, w2), dev, args.repeats, warmup=1)
    gemm_s = timed(lambda: a @ b, dev, args.repeats, warmup=1)
    load = torch.bincount(ids.reshape(-1).long().cpu(), minlength=e).float()
    eff = gemm_s / moe_s
    verdict = "pass" if eff >= TARGET else "miss"
    table = Table(title=f"MoE experts vs one dense GEMM of equal FLOPs: T={t}, E={e}, top-{k}, dim={d}, inter={i}, "
                        f"{str(dt).removeprefix('torch.')}, device={dev}")
    for c in ("path", "time (ms)", "GFLOP/s"):
        table.add_column(c)
    table.add_row("moe_experts (torch)", f"{moe_s * 1e3:.1f}", f"{flops / moe_s / 1e9:.1f}")
    table.add_row(f"dense GEMM [{t * k}, {d}] x [{d}, {3 * i}]", f"{gemm_s * 1e3:.1f}", f"{flops / gemm_s / 1e9:.1f}")
    table.add_row("efficiency (moe FLOP/s / GEMM FLOP/s)", f"{eff:.2f}", f"target >= {TARGET:.2f}: "
                  f"[{'green' if verdict == 'pass' else 'red'}]{verdict}[/]")
    table.add_row("expert load max / mean", f"{load.max() / load.mean():.2f}", "")
    Console().print(table)
    return {"benchmark": "moe_efficiency", "device": str(dev), "dtype": str(dt), "tokens": t, "experts": e, "topk": k,
            "dim": d, "inter": i, "moe_s": moe_s, "gemm_s": gemm_s, "gflops_moe": flops / moe_s / 1e9,
            "gflops_gemm": flops / gemm_s / 1e9, "efficiency": eff, "target": TARGET, "verdict": verdict}
