"""The profile report: a versioned JSON document (schema.json, SCHEMA.md),
merged across machines like the conformance report, and rendered as a
terminal table, Markdown, and a --compare view. Every renderer reads the
JSON document, so a merged report renders exactly like a fresh one."""
from __future__ import annotations

import datetime as _dt
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from ...conformance.report import device_info, strict_json
from ...conformance.schema import errors as _schema_errors

SCHEMA_NAME = "dsport-profile"
SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).with_name("schema.json")
VERDICTS = ("pass", "fail", "crash", "unsupported", "skip")


@cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def errors(doc: Any) -> list[str]:
    """Schema violations, plus the rule a schema cannot state: timing and perf only on a passed case."""
    out = _schema_errors(doc, schema())
    if not out:
        for i, r in enumerate(doc["results"]):
            if r["accuracy"]["verdict"] != "pass" and (r["timing"] is not None or r["perf"] is not None):
                out.append(f"$.results[{i}]: {r['backend']}/{r['op']}/{r['case']} has a speed figure but verdict "
                           f"{r['accuracy']['verdict']!r}")
    return out


def validate(doc: Any) -> None:
    errs = errors(doc)
    if errs:
        raise ValueError("profile report breaks schema v1:\n  " + "\n  ".join(errs[:20]))


def machine_env(roof: Mapping[str, Any], scale: Mapping[str, Any], check_scale: Mapping[str, Any],
                timing: Mapping[str, Any]) -> dict[str, Any]:
    import platform
    import socket

    import torch

    from ... import __version__

    dev = device_info()
    host = socket.gethostname()
    return {"machine": host if dev["kind"] == "cpu" else f"{host}:{dev['name']}",
            "device": {"kind": dev["kind"], "name": dev["name"] if dev["kind"] != "cpu" else (platform.processor() or platform.machine())},
            "roofline": dict(roof), "scale": dict(scale), "check_scale": dict(check_scale), "timing": dict(timing),
            "packages": {"dsport": __version__, "torch": torch.__version__}}


def summary(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    rs = list(results)
    c = Counter(r["accuracy"]["verdict"] for r in rs)
    return {"counts": {v: c.get(v, 0) for v in VERDICTS}, "timed": sum(r["timing"] is not None for r in rs)}


def build_document(rows: Sequence[Mapping[str, Any]], env: Mapping[str, Any], command: str) -> dict[str, Any]:
    results = [{**r, "machine": env["machine"]} for r in rows]
    doc = {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION,
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "command": command, "environments": [dict(env)], "results": results, "summary": summary(results)}
    doc = strict_json(doc)
    validate(doc)
    return doc


def write_json(doc: Mapping[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def load(path: str) -> dict[str, Any]:
    with open(path) as f:
        doc = json.load(f)
    validate(doc)
    return doc


def merge(docs: Sequence[Mapping[str, Any]], names: Sequence[str] = ()) -> dict[str, Any]:
    """One document from several machines; a (machine, backend, op, case) seen twice keeps the later one."""
    envs: dict[str, Any] = {}
    rows: dict[tuple[str, str, str, str], Any] = {}
    for d in docs:
        if d.get("schema") != SCHEMA_NAME or d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"cannot merge a report of schema {d.get('schema')} v{d.get('schema_version')}")
        for e in d["environments"]:
            envs[e["machine"]] = e
        for r in d["results"]:
            rows[(r["machine"], r["backend"], r["op"], r["case"])] = r
    out = {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION,
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "command": "dsport profile --merge " + " ".join(names), "merged_from": list(names),
           "environments": list(envs.values()), "results": list(rows.values())}
    out["summary"] = summary(out["results"])
    validate(out)
    return out


# -- rendering -------------------------------------------------------------------------------------
def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e6:.0f} us" if s < 1e-3 else (f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s")


def _num(x: float | None, unit: str = "", digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}{unit}"


def row_cells(r: Mapping[str, Any], multi: bool) -> list[str]:
    acc, t, p = r["accuracy"], r["timing"], r["perf"]
    backend = f"{r['backend']}@{r['machine']}" if multi else r["backend"]
    if t is None:
        why = acc["reason"] or acc["verdict"]
        return [r["op"], r["phase"], backend, acc["verdict"], "-", "-", "-", "-", "-", "-", why[:90]]
    spread = f"±{t['iqr_s'] / t['median_s'] * 50:.0f}%" if t["median_s"] else "-"
    share = p["roofline_share"]
    share_s = "-" if share is None else f"{share * 100:.1f}%{'*' if p['roofline_partial'] else ''}{'!' if share > 1 else ''}"
    note = "" if acc["checked_at"] == "the profiled shape" else "accuracy at check scale"
    no_math = not r["flops"]  # pure data movement (quantize, pack): FLOP/s is not a figure of merit
    return [r["op"], r["phase"], backend, "pass", f"{fmt_time(t['median_s'])} {spread}", "-" if no_math else _num(p["tflops"] * 1e3),
            _num(p["gbps"]), "-" if no_math else _num(p["intensity"]), share_s, p["bound"], note]


HEADER = ["op", "phase", "backend", "accuracy", "median (IQR/2)", "GFLOP/s", "GB/s", "FLOP/B", "roofline", "bound", "note"]


def print_terminal(doc: Mapping[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=200)
    multi = len(doc["environments"]) > 1
    for env in doc["environments"]:
        rf = env["roofline"]
        peaks = ", ".join(f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in rf["peak_flops"].items() if v)
        bw = f"{rf['bandwidth'] / 1e9:.3g} GB/s" if rf["bandwidth"] else "bandwidth unknown"
        console.print(f"[bold]{env['machine']}[/]: roofline {rf['name']} ({rf['origin']}): {peaks}, {bw}. {rf['note']}")
        console.print(f"shapes: {env['scale'].get('describe', '')}\naccuracy checked at {env['check_scale'].get('describe', '')} "
                      "unless a row says otherwise")
    t = Table(*HEADER, title="dsport profile: accuracy gate, then time and roofline (a failed case has no speed figure)")
    style = {"pass": "green", "fail": "red", "crash": "bold red", "unsupported": "yellow", "skip": "dim"}
    for r in doc["results"]:
        cells = row_cells(r, multi)
        cells[3] = f"[{style[r['accuracy']['verdict']]}]{cells[3]}[/]"
        t.add_row(*cells)
    console.print(t)
    console.print("roofline = roofline time max(F/peak, B/bandwidth) over measured median; * a peak is unknown (partial); "
                  "! above 1: the FLOP/byte model counts work the backend skips, or the measured peak is low")


def markdown(doc: Mapping[str, Any]) -> str:
    multi = len(doc["environments"]) > 1
    lines = [f"# dsport profile", "", f"`{doc['command']}` — {doc['created']}", ""]
    for env in doc["environments"]:
        rf = env["roofline"]
        peaks = ", ".join(f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in rf["peak_flops"].items() if v)
        bw = f"{rf['bandwidth'] / 1e9:.3g} GB/s" if rf["bandwidth"] else "bandwidth unknown"
        lines += [f"- **{env['machine']}**: roofline {rf['name']} ({rf['origin']}): {peaks}, {bw}. {rf['note']}",
                  f"- shapes: {env['scale'].get('describe', '')}; accuracy checked at {env['check_scale'].get('describe', '')}"]
    lines += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in doc["results"]:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in row_cells(r, multi)) + " |")
    c = doc["summary"]["counts"]
    lines += ["", f"{doc['summary']['timed']} timed; accuracy " + ", ".join(f"{k} {v}" for k, v in c.items() if v), ""]
    return "\n".join(lines)


def compare(doc: Mapping[str, Any], a: str, b: str) -> list[dict[str, Any]]:
    """Speed ratio b/a -> 'a is x times faster' for cases that passed the gate on both; others say why not."""
    by: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}
    for r in doc["results"]:
        by.setdefault((r["op"], r["case"]), {})[r["backend"]] = r
    out = []
    for (op, case), rs in by.items():
        ra, rb = rs.get(a), rs.get(b)
        if ra is None or rb is None:
            continue
        va, vb = ra["accuracy"]["verdict"], rb["accuracy"]["verdict"]
        if ra["timing"] is None or rb["timing"] is None:
            out.append({"op": op, "case": case, "ratio": None, "why": f"{a}: {va}, {b}: {vb} (ratio only when both pass)"})
        else:
            out.append({"op": op, "case": case, "ratio": rb["timing"]["median_s"] / ra["timing"]["median_s"],
                        "a_s": ra["timing"]["median_s"], "b_s": rb["timing"]["median_s"], "why": ""})
    return out


def print_compare(doc: Mapping[str, Any], a: str, b: str, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=200)
    t = Table("op", "case", a, b, f"speed-up of {a} over {b}", title=f"--compare {a} {b}: ratios only where both pass the accuracy gate")
    for c in compare(doc, a, b):
        if c["ratio"] is None:
            t.add_row(c["op"], c["case"], "-", "-", f"[dim]{c['why']}[/]")
        else:
            t.add_row(c["op"], c["case"], fmt_time(c["a_s"]), fmt_time(c["b_s"]), f"{c['ratio']:.2f}x")
    console.print(t)
