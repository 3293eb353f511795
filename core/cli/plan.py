"""``dsport plan CONFIG --tp N --ep M``: per-rank memory of a deployment
(weights, latent and indexer caches, activations) and whether it fits an
accelerator. CONFIG is a config.json, a checkpoint folder, or ``671B`` (the
release config)."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import DsportError
from ..plan import GIB, MemoryPlan, hardware_memory, plan

RELEASE = ("671B", "release")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="config.json, a checkpoint folder, or '671B' for the release config")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (attention heads, dense/shared MLP, vocab)")
    p.add_argument("--ep", type=int, default=1, help="expert-parallel degree (routed experts)")
    p.add_argument("--context", type=int, default=8192, help="tokens cached per sequence (default 8192)")
    p.add_argument("--batch", type=int, default=1, help="sequences in flight (split over data-parallel attention groups)")
    p.add_argument("--chunk", type=int, default=4096, help="prefill chunk in tokens (default 4096)")
    p.add_argument("--hardware", help="an accelerator of core/profile/hardware.yaml (H800, H200, MI300X, MI350X, Ascend-910B, Ascend-910C)")
    p.add_argument("--check", action="store_true", help="CONFIG is a checkpoint folder: also compare the plan's weight "
                   "bytes (tp = ep = 1) with its safetensors files and with what the loaded model holds")
    p.add_argument("--json", metavar="FILE", help="also write the plan as JSON")


def _gib(b: float) -> str:
    """Bytes in the largest binary unit that keeps the figure at least 1 (GiB at most)."""
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(b) >= size:
            return f"{b / size:,.2f} {unit}"
    return f"{b:,.0f} B"


def _render(p: MemoryPlan, hw: tuple[str, float] | None) -> list[str]:
    c = p.cfg
    lines = [f"dsport plan: {c.n_layers} layers, dim {c.dim}, {c.n_heads} heads, {c.n_routed_experts} routed experts; "
             f"tp={p.tp} ep={p.ep} -> {p.world} rank(s), {p.dp} data-parallel attention group(s); "
             f"batch {p.batch} ({p.local_batch} per rank's group) x context {p.context}, prefill chunk {min(p.chunk, p.context)}",
             "", "| per rank | bytes |", "|---|---|"]
    for g, b in sorted(p.weights.items(), key=lambda kv: -kv[1]):
        lines.append(f"| weights: {g} | {_gib(b)} |")
    lines.append(f"| **weights** | **{_gib(p.weight_bytes)}** |")
    for g, b in p.caches.items():
        lines.append(f"| cache: {g} | {_gib(b)} |")
    lines.append(f"| **caches** | **{_gib(p.cache_bytes)}** |")
    for phase, b in p.activations.items():
        top = max(p.activation_terms[phase].items(), key=lambda kv: kv[1])
        lines.append(f"| activations, {phase} (largest: {top[0]}, {_gib(top[1])}) | {_gib(b)} |")
    lines.append(f"| **total (weights + caches + larger activation peak)** | **{_gib(p.total)}** |")
    if hw:
        name, mem = hw
        verdict = "fits" if p.total <= mem else "does NOT fit"
        lines += ["", f"{name}: {_gib(mem)} per device -> {verdict} "
                  f"({_gib(mem - p.total)} {'left' if p.total <= mem else 'short'}, before the runtime's own "
                  "buffers: CUDA/HIP context, communication buffers, allocator slack)"]
    return lines


def run(args: argparse.Namespace) -> int:
    from ..constants import DEEPSEEK_V32
    from ..model.config import load_config

    try:
        cfg = DEEPSEEK_V32 if args.config in RELEASE else load_config(args.config)
        hw = hardware_memory(args.hardware) if args.hardware else None
        p = plan(cfg, args.tp, args.ep, args.context, args.batch, args.chunk)
    except DsportError as e:
        print(f"dsport plan: {e}", file=sys.stderr)
        return 2
    print("\n".join(_render(p, hw)))
    if args.check:
        from ..plan import compare_with_checkpoint

        cols = compare_with_checkpoint(args.config)
        kinds = list(dict.fromkeys(k for col in cols.values() for k in col))
        print(f"\nchecked against {args.config} (tp = ep = 1; bytes):\n")
        print("| tensors | " + " | ".join(cols) + " |")
        print("|---|" + "---|" * len(cols))
        for k in kinds:
            print(f"| {k} | " + " | ".join(f"{col[k]:,}" if k in col else "-" for col in cols.values()) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tp": p.tp, "ep": p.ep, "world": p.world, "context": p.context, "batch": p.batch, "chunk": p.chunk,
                       "weights": p.weights, "caches": p.caches, "activations": p.activations,
                       "activation_terms": p.activation_terms, "total": p.total,
                       "hardware": {"name": hw[0], "memory": hw[1], "fits": p.total <= hw[1]} if hw else None}, f, indent=2)
    return 0
