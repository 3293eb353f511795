"""Model throughput: tokens/s of prefill and of greedy decode for a small
random V3.2 checkpoint, per backend, on this machine.

A backend that lacks ops runs with its fallback chain (the table says which
backend served how many ops); the Triton backend is left out on CPU, where
its interpreter measures Python, not kernels. Small configs make these
figures about per-op overheads as much as FLOPs: compare backends with each
other within one run, not with a GPU. Each backend runs a warm-up round and
then ``--rounds`` rounds (prefill, then the decode steps); the medians are
kept, since one 128-token prefill lasts tens of milliseconds on this CPU and a
single one swings with the machine's load (120 to 2650 tok/s were seen)."""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from ..model import Model, tiny_config
from ..model.weights import make_checkpoint
from ..registry import load_backend, resolve

DESCRIPTION = __doc__.splitlines()[0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backends", nargs="+", default=["reference", "torch", "tilelang"])
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens (more than the tiny config's index_topk of 64)")
    p.add_argument("--decode", type=int, default=16, help="greedy decode steps")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds after a warm-up one; the median is kept")


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = replace(tiny_config(), n_layers=args.layers)
    ckpt = make_checkpoint(tempfile.mkdtemp(prefix="dsport-bench-"), cfg, seed=0)
    prompt = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt), generator=torch.Generator().manual_seed(0))
    out: dict[str, Any] = {"benchmark": "model_tokens", "config": {"layers": args.layers, "dim": cfg.dim, "heads": cfg.n_heads,
                                                                   "experts": cfg.n_routed_experts, "index_topk": cfg.index_topk},
                           "prompt": args.prompt, "decode": args.decode, "batch": args.batch, "rounds": args.rounds,
                           "backends": {}}
    table = Table(title=f"tiny V3.2 ({args.layers} layers, dim {cfg.dim}, FP8 weights): prompt {args.prompt}, "
                        f"{args.decode} decode steps, batch {args.batch}, median of {args.rounds} rounds")
    for c in ("backend", "model dtype", "ops served", "prefill tok/s", "decode tok/s"):
        table.add_column(c)
    for name in args.backends:
        ok, why = load_backend(name).available()
        if not ok:
            table.add_row(name, "-", "-", "unavailable", why)
            continue
        ops = resolve({"backend": name, "fallback": "fallback", "dtype": "float32"} if name != "reference" else "reference",
                      validate=False)
        dtype = torch.float64 if name == "reference" else torch.float32
        model = Model.from_pretrained(ckpt, ops=ops, dtype=dtype)
        times: list[tuple[float, float]] = []
        for r in range(max(args.rounds, 1) + 1):  # round 0 warms up (first calls compile or allocate) and is dropped
            model.reset(args.batch, args.prompt + args.decode)
            t0 = time.perf_counter()
            nxt = model(prompt)[:, -1].argmax(-1, keepdim=True)
            t1 = time.perf_counter()
            for i in range(args.decode):
                nxt = model(nxt, args.prompt + i)[:, -1].argmax(-1, keepdim=True)
            if r:
                times.append((t1 - t0, time.perf_counter() - t1))
        t_prefill, t_decode = (statistics.median(t) for t in zip(*times))
        prefill, decode = args.batch * args.prompt / t_prefill, args.batch * args.decode / t_decode
        served = {b: list(ops.served_by.values()).count(b) for b in dict.fromkeys(ops.served_by.values())}
        out["backends"][name] = {"prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode, "served_by": served,
                                 "dtype": str(dtype).removeprefix("torch.")}
        table.add_row(name, str(dtype).removeprefix("torch."), ", ".join(f"{b} {n}" for b, n in served.items()),
                      f"{prefill:.1f}", f"{decode:.2f}")
    Console().print(table)
    return out
