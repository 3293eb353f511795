"""PNG charts (matplotlib, Agg): the roofline with one point per op x backend,
the time of a whole decoder layer split by op (where the time goes), and the
per-token cost of DSA vs dense MLA across context lengths."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _unit(seconds: float) -> tuple[str, float]:
    """The time unit that keeps the largest value between 1 and 1000."""
    for name, scale in (("us", 1e6), ("ms", 1e3)):
        if seconds * scale < 1000:
            return name, scale
    return "s", 1.0


def _what(cost: Mapping[str, Any]) -> str:
    return f"decode batch {cost['batch']}" if cost.get("phase", "decode") == "decode" else f"prefill in {cost['chunk']}-token chunks"


def roofline_png(doc: Mapping[str, Any], path: str) -> None:
    env = doc["environments"][0]
    rf = env["roofline"]
    fig, ax = plt.subplots(figsize=(10, 6.5))
    pts = [r for r in doc["results"] if r["perf"] and r["perf"]["intensity"] and r["machine"] == env["machine"]]
    xs = [r["perf"]["intensity"] for r in pts] or [1.0]
    lo, hi = min(xs + [0.05]) / 2, max(xs + [1e3]) * 2
    bw = rf["bandwidth"]
    for cls, peak in rf["peak_flops"].items():
        if not peak or (cls == "fp8" and peak == rf["peak_flops"].get("bf16")):
            continue
        grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
        ys = [min(peak, x * bw) if bw else peak for x in grid]
        ax.plot(grid, ys, "-", lw=2, label=f"roof {cls}: {peak / 1e9:.3g} GFLOP/s" + (f", {bw / 1e9:.3g} GB/s" if bw else ""))
    markers = "os^Dv<>P*X"
    backends = sorted({r["backend"] for r in pts})
    cmap = plt.get_cmap("tab20")
    ops = sorted({r["op"] for r in pts})
    for r in pts:
        p = r["perf"]
        y = p["tflops"] * 1e12
        ax.scatter(p["intensity"], y, marker=markers[backends.index(r["backend"]) % len(markers)],
                   color=cmap(ops.index(r["op"]) % 20), s=45, edgecolor="k", lw=0.5, zorder=3)
        ax.annotate(f"{r['op']}/{r['phase'][0]}", (p["intensity"], y), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte, from the op specs)")
    ax.set_ylabel("achieved FLOP/s (median)")
    ax.set_title(f"dsport profile roofline: {rf['name']} ({rf['origin']})\nbackends: {', '.join(backends)} "
                 f"(markers {', '.join(f'{b}={markers[i]}' for i, b in enumerate(backends))}); /p prefill, /d decode", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def layer_bars_png(cost: Mapping[str, Any], path: str, context: int | None = None) -> None:
    """Bars: per-token time of each op over one layer (all its calls summed), DSA and dense MLA, at one context."""
    entries = cost["contexts"]
    e = next((c for c in entries if c["context"] == context), entries[-1])
    fig, axes = plt.subplots(1, 2, figsize=(13, 6), sharex=True)
    for ax, variant, title in zip(axes, ("dsa", "dense"), ("DSA (indexer + top-k + sparse MLA)", "dense MLA")):
        per_op: dict[str, float] = {}
        for c in e[variant]["calls"]:
            if c["per_token_s"]:
                per_op[c["op"]] = per_op.get(c["op"], 0.0) + c["per_token_s"]
        total = sum(per_op.values())
        unit, k = _unit(max(e["dsa"]["per_token_s"], e["dense"]["per_token_s"]))
        items = sorted(per_op.items(), key=lambda kv: kv[1])
        ax.barh([name for name, _ in items], [v * k for _, v in items], color="tab:blue" if variant == "dsa" else "tab:gray")
        for i, (_, v) in enumerate(items):
            ax.text(v * k, i, f" {100 * v / total:.1f}%", va="center", fontsize=7)
        ax.set_title(f"{title}: {total * k:.4g} {unit}/token", fontsize=9)
        ax.set_xlabel(f"modelled time per token ({unit})")
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"Where the time goes: one MoE decoder layer, context {e['context'] // 1024}K, {_what(cost)}, "
                 f"EP{cost.get('ep', 32)} rank\n{cost['roofline']} ({cost['roofline_origin']} roofline); efficiencies {cost['efficiency_from']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cost_png(cost: Mapping[str, Any], path: str) -> None:
    """Stacked per-token time by group vs context, DSA, with the dense-MLA total as a line."""
    ctx = [c["context"] for c in cost["contexts"]]
    groups = list(cost["contexts"][0]["dsa"]["groups"])
    fig, ax = plt.subplots(figsize=(9, 5.5))
    x = range(len(ctx))
    unit, k = _unit(max(max(c["dense"]["per_token_s"], c["dsa"]["per_token_s"]) for c in cost["contexts"]))
    bottom = [0.0] * len(ctx)
    cmap = plt.get_cmap("tab10")
    for i, g in enumerate(groups):
        vals = [c["dsa"]["groups"][g] * k for c in cost["contexts"]]
        ax.bar(x, vals, bottom=bottom, label=f"DSA: {g}", color=cmap(i % 10), width=0.6)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.plot(list(x), [c["dense"]["per_token_s"] * k for c in cost["contexts"]], "k--o", label="dense MLA: total")
    ax.set_xticks(list(x), [f"{c // 1024}K" for c in ctx])
    ax.set_xlabel("context length")
    ax.set_ylabel(f"modelled time per token, one layer ({unit})")
    ax.set_title(f"DSA O(L*k) vs dense O(L^2) per sequence, shown per token: {_what(cost)}\n"
                 f"{cost['roofline']} ({cost['roofline_origin']}); efficiencies {cost['efficiency_from']}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
