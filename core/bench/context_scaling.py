"""Benchmark 2: per-query cost of sparse prefill and of a decode step stays
flat as the context grows from 8K to 64K (target: within 1.3x).

Prefill: 512 queries at the end of the context, H = 128, top-k 2048, bf16
latent KV. Decode: batch 8, one query each, H = 128, top-k 2048 over the
656-byte FP8 paged cache (page 64), so each step gathers and dequantizes
only the 2048 rows its indices name."""
from __future__ import annotations

import argparse
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from ...backends.torch import attention, mla_cache, policy
from .sparse_vs_dense import causal_topk_indices, timed

DESCRIPTION = __doc__.splitlines()[0]
TARGET = 1.3
PAGE = 64


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--contexts", type=int, nargs=2, default=[8192, 65536], metavar=("SHORT", "LONG"))
    p.add_argument("--queries", type=int, default=512)
    p.add_argument("--heads", type=int, default=128)
    p.add_argument("--topk", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8, help="decode batch")
    p.add_argument("--repeats", type=int, default=1, help="prefill timed runs (best kept)")
    p.add_argument("--decode-repeats", type=int, default=10)
    p.add_argument("--chunk", type=int, default=64, help="prefill queries per interleaved measurement")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _prefill_inputs(s: int, args: argparse.Namespace, dev: torch.device):
    gen = torch.Generator().manual_seed(s)
    q = torch.randn(args.queries, args.heads, 576, generator=gen).to(torch.bfloat16).to(dev)
    kv = torch.randn(s, 1, 576, generator=gen).to(torch.bfloat16).to(dev)
    return q, kv, causal_topk_indices(args.queries, s, args.topk, gen, dev)


def _decode_inputs(s: int, args: argparse.Namespace, dev: torch.device):
    gen = torch.Generator().manual_seed(s + 1)
    b, nb = args.batch, args.batch * s // PAGE
    cache = torch.empty(nb * PAGE, 656, dtype=torch.uint8)
    for r0 in range(0, nb * PAGE, 65536):  # pack in slices so setup never holds the whole bf16 pool
        cache[r0:r0 + 65536] = mla_cache.mla_cache_pack(torch.randn(min(65536, nb * PAGE - r0), 576, generator=gen))
    cache = cache.reshape(nb, PAGE, 1, 656).to(dev)
    q = torch.randn(b, 1, args.heads, 576, generator=gen).to(torch.bfloat16).to(dev)
    # sequence i owns pages [i * s/PAGE, (i+1) * s/PAGE); its k picks are distinct positions of its own context
    local = torch.rand(b, s, generator=gen).topk(args.topk, dim=-1).indices
    idx = (local + torch.arange(b)[:, None] * s).to(torch.int32).unsqueeze(1).to(dev)
    return q, cache, idx


def run(args: argparse.Namespace) -> dict[str, Any]:
    dev = torch.device(args.device)
    short, long_ = args.contexts
    ctx = (short, long_)
    scale = 576 ** -0.5
    pre = {c: _prefill_inputs(c, args, dev) for c in ctx}
    dec = {c: _decode_inputs(c, args, dev) for c in ctx}
    # short and long contexts run interleaved (prefill chunk by chunk, decode step by step) so a load swing
    # on a shared host hits both sides alike
    res: dict[str, dict[int, float]] = {"prefill": {c: 0.0 for c in ctx}, "decode": {c: float("inf") for c in ctx}}
    for c0 in range(0, args.queries, args.chunk):
        c1 = min(args.queries, c0 + args.chunk)
        for c in ctx:
            q, kv, idx = pre[c]
            res["prefill"][c] += timed(lambda: attention.sparse_mla_prefill(q[c0:c1], kv, idx[c0:c1], scale, 512),
                                       dev, args.repeats) / args.queries
    for c in ctx:  # warm-up of the decode path
        attention.sparse_mla_decode(*dec[c][:2], dec[c][2], scale, 512, "e4m3fn")
    for _ in range(args.decode_repeats):
        for c in ctx:
            q, cache, idx = dec[c]
            t = timed(lambda: attention.sparse_mla_decode(q, cache, idx, scale, 512, "e4m3fn"), dev, 1) / args.batch
            res["decode"][c] = min(res["decode"][c], t)
    table = Table(title=f"per-query cost vs context: prefill T={args.queries}, decode B={args.batch}, H={args.heads}, "
                        f"topk={args.topk}, device={dev}")
    for c in ("path", f"{short} ctx (ms/query)", f"{long_} ctx (ms/query)", "ratio long/short", f"target <= {TARGET}"):
        table.add_column(c)
    out: dict[str, Any] = {"benchmark": "context_scaling", "device": str(dev), "contexts": [short, long_],
                           "queries": args.queries, "batch": args.batch, "heads": args.heads, "topk": args.topk,
                           "matmul_policy": policy.describe()}
    for path, times in res.items():
        ratio = times[long_] / times[short]
        verdict = "pass" if ratio <= TARGET else "miss"
        table.add_row(f"sparse {path}", f"{times[short] * 1e3:.2f}", f"{times[long_] * 1e3:.2f}", f"{ratio:.2f}x",
                      f"[{'green' if verdict == 'pass' else 'red'}]{verdict}[/]")
        out[path] = {"ms_per_query": {str(c): t * 1e3 for c, t in times.items()}, "ratio": ratio, "verdict": verdict}
    Console().print(table)
    return out
