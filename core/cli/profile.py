"""``dsport profile``: per-op time, throughput and share of the roofline for
each op x backend x phase, behind an accuracy gate; plus the modelled cost
of a DeepSeek-V3.2 decoder layer per token across context lengths."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..backend import BackendModule

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", action="append", metavar="B[,B]", help="backend(s) to profile (repeatable); default: every available one but the reference")
    p.add_argument("--backend-module", action="append", metavar="NAME=MODULE", default=[],
                   help="profile a backend module outside the built-in list (e.g. a port under development)")
    p.add_argument("--ops", action="append", metavar="OP[,OP]", help="only these ops (comma-separated, repeatable)")
    p.add_argument("--shapes", choices=("prefill", "decode", "all"), default="all", help="which phase's shapes")
    p.add_argument("--scale", choices=("cpu", "device"), help="token counts: 'device' = 4096-token chunks, batch 64 (default on accelerators)")
    p.add_argument("--device", help="torch device to run on (default: cuda/npu if present, else cpu)")
    p.add_argument("--hardware", metavar="NAME", help="use this hardware.yaml roofline instead of detection/probes")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timed repeats per case before stopping early (min 3 repeats)")
    p.add_argument("--json", metavar="F", help="write the report (schema dsport-profile v1)")
    p.add_argument("--markdown", metavar="F", help="write the report as Markdown")
    p.add_argument("--plot", metavar="F.png", help="roofline chart; also F_layer.png (time per op of one layer) and F_cost.png (per context)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="speed ratios of A over B, only where both pass the accuracy gate")
    p.add_argument("--merge", nargs="+", metavar="F", help="merge profile reports from several machines (then render/write as usual)")
    p.add_argument("--from-json", metavar="F", help="render an existing report instead of profiling")
    p.add_argument("--contexts", default="8192,16384,32768,65536,131072", help="context lengths of the cost view")
    p.add_argument("--cost-batch", type=int, default=32, help="decode batch of the cost view")
    p.add_argument("--cost-phase", choices=("decode", "prefill"), default="decode",
                   help="cost per generated token (decode) or per prompt token of a whole prefill in 4096-token chunks")
    p.add_argument("--cost-hardware", metavar="NAME", help="cost view on this hardware.yaml roofline (roofline bound, not measured)")
    p.add_argument("--cost-backend", help="whose measured efficiencies the cost view uses (default: the first profiled backend)")
    p.add_argument("--no-cost", action="store_true", help="skip the cost view")
    p.add_argument("--cost-only", action="store_true",
                   help="only the cost view (no op is run): on --cost-hardware's roofline, or this CPU's probes, at efficiency 1")


def _device(arg: str | None) -> str:
    import torch

    if arg:
        return arg
    if torch.cuda.is_available():
        return "cuda"
    npu = getattr(torch, "npu", None)
    return "npu" if npu is not None and npu.is_available() else "cpu"


def _backends(args: argparse.Namespace) -> tuple[dict[str, BackendModule], list[str]]:
    from .. import registry
    from ..backend import import_backend
    from ..errors import BackendUnavailable
    from ..registry import load_backend

    notes: list[str] = []
    mods: dict[str, BackendModule] = {}
    # entry-point plugins too, where the registry can discover them
    known = list(registry.discover()) if hasattr(registry, "discover") else list(registry.BUILTIN_BACKENDS)
    names = [b.strip() for chunk in args.backend for b in chunk.split(",") if b.strip()] if args.backend else \
        [b for b in known if b != "reference"]
    for name in names:
        try:
            mod = load_backend(name)
        except BackendUnavailable as e:
            if args.backend:
                raise
            notes.append(f"{name}: skip (not importable here: {e})")
            continue
        ok, reason = mod.available()
        if not ok:
            if args.backend:
                raise BackendUnavailable(f"backend '{name}' is unavailable here: {reason}")
            notes.append(f"{name}: skip ({reason})")
            continue
        mods[name] = mod
    for spec in args.backend_module:
        name, _, module = spec.partition("=")
        if not module:
            from ..errors import ConfigError

            raise ConfigError(f"--backend-module: expected NAME=MODULE, got {spec!r}")
        mods[name] = import_backend(module, name)
    return mods, notes


def _ops(args: argparse.Namespace) -> list[str] | None:
    if not args.ops:
        return None
    from ..profile.shapes import MAKERS, NOT_PROFILED
    from ..spec import get_spec

    ops = [o.strip() for chunk in args.ops for o in chunk.split(",") if o.strip()]
    for o in ops:
        get_spec(o)  # unknown names raise a ValidationError with a close match
        if o not in MAKERS:
            from ..errors import ConfigError

            raise ConfigError(f"--ops: {o} is not profiled ({NOT_PROFILED.get(o, 'no profile shape')})")
    return ops


def profile(args: argparse.Namespace, console: Any) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..profile import hardware, report
    from ..profile.run import ProfilePlan, run
    from ..profile.shapes import CPU, DEVICE, PHASES, check_scale, profile_cases
    from ..registry import load_backend

    device = _device(args.device)
    scale = {"cpu": CPU, "device": DEVICE}[args.scale or ("cpu" if device == "cpu" else "device")]
    mods, notes = _backends(args)
    for n in notes:
        console.print(f"[dim]{n}[/]")
    phases = PHASES if args.shapes == "all" else (args.shapes,)
    cases = profile_cases(scale, _ops(args), phases)
    with console.status("measuring the roofline of this machine (matmul and streaming-copy probes)" if device == "cpu" and not args.hardware
                        else "reading the roofline"):
        roof = hardware.for_device(device, args.hardware)
    console.print(f"roofline: {roof.name} ({roof.origin}); {roof.note}")
    plan = ProfilePlan(mods, cases, roof, load_backend("reference"), device, args.warmup, args.repeats, min(3, args.repeats), args.budget)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as prog:
        task = prog.add_task("profiling", total=len(cases) * len(mods))

        def on_row(r: dict[str, Any]) -> None:
            prog.update(task, advance=1, description=f"{r['backend']}: {r['op']} ({r['phase']}) {r['accuracy']['verdict']}")

        rows = run(plan, on_row)
    chk = check_scale(scale)
    env = report.machine_env(roof.to_json(), {**dataclasses.asdict(scale), "describe": scale.describe()},
                             {**dataclasses.asdict(chk), "describe": chk.describe()},
                             {"warmup": args.warmup, "repeats": args.repeats, "min_repeats": plan.min_repeats, "budget_s": args.budget,
                              "statistic": "median of individually timed calls; spread = IQR"})
    return report.build_document(rows, env, "dsport profile " + shlex.join(sys.argv[2:] if len(sys.argv) > 2 else []))


def _cost(args: argparse.Namespace, doc: dict[str, Any] | None, console: Any) -> dict[str, Any]:
    from ..profile import cost as costmod
    from ..profile.hardware import Roofline, for_device, from_table

    contexts = [int(c) for c in args.contexts.split(",")]
    if args.cost_hardware:
        roof, eff = from_table(args.cost_hardware), {}
    elif doc is None:
        roof, eff = for_device(_device(args.device), args.hardware), {}
    else:
        rf = doc["environments"][0]["roofline"]
        roof = Roofline(rf["name"], rf["peak_flops"], rf["bandwidth"], rf["origin"], rf["note"])
        backends = [r["backend"] for r in doc["results"]]
        who = args.cost_backend or (backends[0] if backends else None)
        eff = costmod.efficiencies(doc, who)
    c = costmod.cost_table(roof, eff, args.cost_batch, contexts, phase=args.cost_phase)
    c["efficiency_backend"] = None if args.cost_hardware else (args.cost_backend or next((r["backend"] for r in doc["results"]), None))
    return c


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..profile import cost as costmod
    from ..profile import plots, report

    console = Console(width=max(160, Console().width))
    if args.cost_only:
        c = _cost(args, None, console)
        console.print(costmod.markdown_table(c))
        if args.markdown:
            Path(args.markdown).write_text("## Cost view\n\n" + costmod.markdown_table(c))
        if args.json:
            Path(args.json).write_text(json.dumps(c, indent=1, default=str) + "\n")
        if args.plot:
            base = Path(args.plot)
            plots.layer_bars_png(c, str(base.with_name(base.stem + "_layer" + base.suffix)))
            plots.cost_png(c, str(base.with_name(base.stem + "_cost" + base.suffix)))
        return 0
    if args.merge:
        doc = report.merge([report.load(p) for p in args.merge], args.merge)
    elif args.from_json:
        doc = report.load(args.from_json)
    else:
        doc = profile(args, console)
    report.print_terminal(doc, console)
    if args.compare:
        report.print_compare(doc, *args.compare, console=console)
    if not args.no_cost:
        c = _cost(args, doc, console)
        doc["cost"] = c
        console.print(costmod.markdown_table(c))
    report.validate(doc)
    if args.json:
        report.write_json(doc, args.json)
        console.print(f"wrote {args.json}")
    if args.markdown:
        text = report.markdown(doc) + ("\n## Cost view\n\n" + costmod.markdown_table(doc["cost"]) if "cost" in doc else "")
        Path(args.markdown).write_text(text)
        console.print(f"wrote {args.markdown}")
    if args.plot:
        base = Path(args.plot)
        plots.roofline_png(doc, str(base))
        written = [str(base)]
        if "cost" in doc:
            layer = base.with_name(base.stem + "_layer" + base.suffix)
            cpath = base.with_name(base.stem + "_cost" + base.suffix)
            plots.layer_bars_png(doc["cost"], str(layer))
            plots.cost_png(doc["cost"], str(cpath))
            written += [str(layer), str(cpath)]
        console.print("wrote " + ", ".join(written))
    failing = doc["summary"]["counts"].get("fail", 0) + doc["summary"]["counts"].get("crash", 0)
    if failing:
        return 1
    if not args.merge and not args.from_json:
        # a backend asked for by name that timed nothing (every row skip or unsupported) was not profiled: not a success
        named = [b.strip() for chunk in args.backend or () for b in chunk.split(",") if b.strip()]
        named += [m.partition("=")[0] for m in args.backend_module]
        timed = {r["backend"] for r in doc["results"] if r.get("timing") is not None}
        silent = [b for b in named if b not in timed] + ([] if doc["summary"].get("timed") or named else ["(any backend)"])
        for b in silent:
            Console(stderr=True).print(f"[red]not checked:[/] {b}: no op was timed (every row skip or unsupported: "
                                       "see the reasons above)", highlight=False)
        if silent:
            return 2
    return 0
