"""dsport's torch backend vs Hugging Face transformers' eager model on one bf16 V3.2 checkpoint: prefill and decode tok/s, logits.

transformers writes a small random DeepSeek-V3.2 checkpoint in bf16 (MoE with
group-limited routing, the indexer selecting index_topk of a longer prompt,
YaRN); both load that same file in the same process. For each prompt length,
each round times, in turn, a prefill of the prompt and greedy decode steps
through each side's cache, dsport then transformers; the median of each side is
kept and the claim is the ratio within this one run. Short prompts measure the
GEMMs both sides share; long ones add what DSA is for: transformers' eager
attention scores every key and masks all but the selected, dsport attends to
the selected keys only (both score every key in the indexer).

Before timing, the prompt's logits are checked. dsport runs in float32 (its
default on CPU), so it is compared with transformers in float32: the same
arithmetic on the same bf16 weights (transformers scores the indexer in float,
which is what dsport's ``indexer="auto"`` picks for a checkpoint without a
``quantization_config``). At long prompts two float32 models part ways at
near ties of their top-k choices (keys, experts), so the check runs
transformers with dsport's choices and checks the choices apart
(:mod:`.shared_choices`). The free-running float32 cosine is reported too, and
``indexer="fp8"`` (the FP8 round trip of DeepSeek's release, which
transformers does not do) as a deliberate difference."""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from ..model import Model
from . import shared_choices as sc

DESCRIPTION = __doc__.splitlines()[0]
COSINE_GOAL = 0.9999
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, default=4, help="decoder layers (the first dense, the rest MoE)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--experts", type=int, default=16, help="routed experts (4 groups, top-2 groups, 4 per token)")
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--index-topk", type=int, default=64)
    p.add_argument("--prompt", type=int, nargs="+", default=[256, 2048],
                   help="prompt lengths, each timed on its own (each must exceed --index-topk, so selection is active; "
                        "default: 4x and 32x index_topk, DeepSeek-V3.2 selects 2048 keys of 8K-128K contexts)")
    p.add_argument("--decode", type=int, default=8, help="greedy decode steps per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds; the median of each side is kept")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for both sides (default 1: on a shared host a multi-thread barrier "
                        "stalls whenever one thread is descheduled)")
    p.add_argument("--hf-dtype", choices=sorted(DTYPES), default="float32",
                   help="dtype transformers computes in (float32: the arithmetic dsport does on CPU; bfloat16: the "
                        "checkpoint's own dtype, logits then differ by bf16 rounding)")
    p.add_argument("--checkpoint", type=Path, help="write the checkpoint here (default: a temporary directory)")


def hf_config(args: argparse.Namespace) -> Any:
    import transformers

    d, h = args.dim, args.heads
    return transformers.DeepseekV32Config(
        vocab_size=args.vocab, hidden_size=d, intermediate_size=2 * d, moe_intermediate_size=d // 2,
        num_hidden_layers=args.layers, first_k_dense_replace=1, num_attention_heads=h, num_key_value_heads=h,
        n_routed_experts=args.experts, n_group=4, topk_group=2, num_experts_per_tok=4, n_shared_experts=1,
        q_lora_rank=d // 2, kv_lora_rank=d // 4, qk_nope_head_dim=d // h, qk_rope_head_dim=d // (2 * h),
        v_head_dim=d // h, index_topk=args.index_topk, index_head_dim=d // h, index_n_heads=16,
        max_position_embeddings=max(8192, max(args.prompt) + args.decode), initializer_range=0.1, attn_implementation="eager",
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 1024,
                         "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0})


def write_checkpoint(args: argparse.Namespace, out: Path) -> None:
    import transformers

    torch.manual_seed(0)
    model = transformers.DeepseekV32ForCausalLM(hf_config(args)).eval()
    with torch.no_grad():  # a non-zero correction bias, so group-limited routing is not the plain top-k
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.normal_(0, 0.1)
    model.to(torch.bfloat16).save_pretrained(out)


def cosine(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Per-position cosine of two [B, S, vocab] logits: median, min and how many positions miss the goal."""
    c = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).flatten()
    return {"median": c.median().item(), "min": c.min().item(), "below_goal": int((c <= COSINE_GOAL).sum())}


# -- timing ---------------------------------------------------------------------------------------------------

def _dsport_side(model: Model, prompt: torch.Tensor, steps: int) -> tuple[Callable[[], Any], Callable[[Any], Any]]:
    n = prompt.shape[1]

    def prefill() -> Any:
        model.reset(prompt.shape[0], n + steps)
        return model(prompt)[:, -1].argmax(-1, keepdim=True)

    def decode(nxt: Any) -> Any:
        for i in range(steps):
            nxt = model(nxt, n + i)[:, -1].argmax(-1, keepdim=True)
        return nxt
    return prefill, decode


def _hf_side(model: Any, prompt: torch.Tensor, steps: int) -> tuple[Callable[[], Any], Callable[[Any], Any]]:
    def prefill() -> Any:
        out = model(prompt, use_cache=True)
        return out.logits[:, -1].argmax(-1, keepdim=True), out.cache

    def decode(state: Any) -> Any:
        nxt, cache = state
        for _ in range(steps):
            out = model(nxt, cache=cache, use_cache=True)
            nxt, cache = out.logits[:, -1].argmax(-1, keepdim=True), out.cache
        return nxt
    return prefill, decode


def _timed(fn: Callable[..., Any], *a: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    r = fn(*a)
    return time.perf_counter() - t0, r


def _one_prompt(args: argparse.Namespace, hf: Any, ds: Model, ds_fp8: Model, n: int) -> dict[str, Any]:
    prompt = torch.randint(0, args.vocab, (1, n), generator=torch.Generator().manual_seed(1))
    got, ours = sc.dsport_choices(ds, prompt)
    with sc.forced(hf, ours) as seen:
        shared = hf(prompt).logits
    free = hf(prompt).logits
    fp8_logits, _ = sc.dsport_choices(ds_fp8, prompt)
    logits = {"shared_choices": cosine(got, shared), "free_running": cosine(got, free), "fp8": cosine(fp8_logits, free)}
    choices = sc.tie_check(hf, seen, ours, args.index_topk)
    sides = {"dsport": _dsport_side(ds, prompt, args.decode), "transformers": _hf_side(hf, prompt, args.decode)}
    times: dict[str, dict[str, list[float]]] = {s: {"prefill": [], "decode": []} for s in sides}
    for r in range(max(args.rounds, 1) + 1):  # round 0 warms up (allocations, first-call paths) and is dropped
        for side, (prefill, decode) in sides.items():
            tp, state = _timed(prefill)
            td, _ = _timed(decode, state)
            if r:
                times[side]["prefill"].append(tp)
                times[side]["decode"].append(td)
    med = {s: {k: statistics.median(v) for k, v in t.items()} for s, t in times.items()}
    out: dict[str, Any] = {
        "prompt": n,
        "tokens_per_s": {s: {"prefill_tokens_per_s": n / m["prefill"], "decode_tokens_per_s": args.decode / m["decode"]}
                         for s, m in med.items()},
        "prefill_speedup": med["transformers"]["prefill"] / med["dsport"]["prefill"],
        "decode_speedup": med["transformers"]["decode"] / med["dsport"]["decode"],
        "logits_cosine": logits, "choices": choices,
        "logits_match": logits["shared_choices"]["min"] > COSINE_GOAL and all(c["ties_only"] for c in choices.values()),
    }
    failed = []
    if logits["shared_choices"]["min"] <= COSINE_GOAL:
        failed.append(f"prompt {n}: logits vs transformers with shared choices: min per-position cosine "
                      f"{logits['shared_choices']['min']:.6f} <= {COSINE_GOAL}")
    for kind, c in choices.items():
        if not c["ties_only"]:
            failed.append(f"prompt {n}: chosen {kind} differ from transformers' in {c['differing_rows']} of {c['rows']} rows "
                          f"(at most {sc.MAX_DIFFERING_ROWS:.0%} allowed), up to {c['max_gap']:.2g} of the row's peak "
                          f"score from the k-th (a tie is within {sc.TIE_GAP:g})")
    if failed:
        out["failed_checks"] = failed
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    short = [n for n in args.prompt if n <= args.index_topk]
    if short:
        raise SystemExit(f"dsport bench vs_transformers: --prompt {short[0]} must exceed --index-topk "
                         f"({args.index_topk}), else the indexer selects every key and is not exercised")
    torch.set_num_threads(args.threads)
    ckpt = args.checkpoint or Path(tempfile.mkdtemp(prefix="dsport-vs-hf-"))
    write_checkpoint(args, ckpt)
    with torch.inference_mode():
        hf = transformers.DeepseekV32ForCausalLM.from_pretrained(ckpt, dtype=DTYPES[args.hf_dtype],
                                                                 attn_implementation="eager").eval()
        ds = Model.from_pretrained(ckpt, backend="torch")
        ds_fp8 = Model.from_pretrained(ckpt, backend="torch", indexer="fp8")   # loaded once, reset per prompt
        per_prompt = [_one_prompt(args, hf, ds, ds_fp8, n) for n in args.prompt]
    out: dict[str, Any] = {
        "benchmark": "vs_transformers", "transformers": transformers.__version__, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "rounds": args.rounds, "decode": args.decode,
        "config": {"layers": args.layers, "dim": args.dim, "heads": args.heads, "experts": args.experts,
                   "vocab": args.vocab, "index_topk": args.index_topk, "checkpoint_dtype": "bfloat16"},
        "dtypes": {"dsport": str(ds.dtype).removeprefix("torch."), "transformers": args.hf_dtype},
        "cosine_goal": COSINE_GOAL, "tie_gap": sc.TIE_GAP, "prompts": per_prompt,
        "logits_match": all(p["logits_match"] for p in per_prompt),
    }
    failed = [f for p in per_prompt for f in p.get("failed_checks", [])]
    if failed:
        out["failed_checks"] = failed
    _print(out)
    return out


def _print(out: dict[str, Any]) -> None:
    c = out["config"]
    table = Table(title=f"dsport (torch backend, {out['dtypes']['dsport']}) vs transformers {out['transformers']} eager "
                        f"({out['dtypes']['transformers']}); bf16 checkpoint: {c['layers']} layers, dim {c['dim']}, "
                        f"{c['experts']} experts, index_topk {c['index_topk']}; {out['decode']} decode steps; "
                        f"{out['threads']} thread(s), median of {out['rounds']} interleaved rounds")
    table.add_column("prompt tokens")
    for p in out["prompts"]:
        table.add_column(str(p["prompt"]), justify="right")
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = []
    for phase, fmt in (("prefill", ".1f"), ("decode", ".2f")):
        for side in ("dsport", "transformers"):
            rows.append((f"{phase} tok/s: {side}",
                         lambda p, side=side, phase=phase, fmt=fmt: format(p["tokens_per_s"][side][f"{phase}_tokens_per_s"], fmt)))
        rows.append((f"{phase}: dsport / transformers", lambda p, phase=phase: f"{p[f'{phase}_speedup']:.2f}x"))
    rows.append(("logits, shared choices: 1 - min cosine", lambda p: f"{1 - p['logits_cosine']['shared_choices']['min']:.1e}"))
    for kind in ("keys", "experts"):
        rows.append((f"chosen {kind} differing (rows)",
                     lambda p, kind=kind: f"{p['choices'][kind]['differing_rows']} / {p['choices'][kind]['rows']}"))
        rows.append((f"  {kind}: largest gap to the k-th score", lambda p, kind=kind: f"{p['choices'][kind]['max_gap']:.1e}"))
    rows += [
        ("logits, free-running: min cosine", lambda p: f"{p['logits_cosine']['free_running']['min']:.6f}"),
        ("  positions below the goal", lambda p: str(p["logits_cosine"]["free_running"]["below_goal"])),
        ("indexer='fp8' vs transformers: min cosine", lambda p: f"{p['logits_cosine']['fp8']['min']:.6f}"),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(p) for p in out["prompts"]))
    console = Console()
    console.print(table)
    console.print(f"logits match (shared choices: every position's cosine > {out['cosine_goal']}; differing choices are "
                  f"ties within {out['tie_gap']:g} of the row's peak score, in <= {sc.MAX_DIFFERING_ROWS:.0%} of rows): "
                  f"{out['logits_match']}")
