"""Conformance reports: the JSON document (schema in SCHEMA.md / schema.json),
the terminal matrix, JUnit XML and Markdown. Every writer reads the JSON
document, so a merged report renders exactly like a fresh one."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import socket
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET

if TYPE_CHECKING:
    from .row import ResultRow

SCHEMA_NAME = "dsport-conformance"
SCHEMA_VERSION = 1
# worst first: a cell shows its worst verdict's colour
SEVERITY = ("crash", "timeout", "fail", "pass", "contract", "built", "unsupported", "skip")
STYLE = {"crash": "bold red", "timeout": "bold magenta", "fail": "red", "pass": "green", "contract": "blue", "built": "cyan",
         "unsupported": "yellow", "skip": "dim"}
FAILING = ("fail", "crash", "timeout")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_info() -> dict[str, Any]:
    """What accelerator this machine has, asked of torch only (no backend import)."""
    import torch

    if torch.cuda.is_available():
        kind = "rocm" if getattr(torch.version, "hip", None) else "cuda"
        return {"kind": kind, "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}
    npu = getattr(torch, "npu", None)
    if npu is not None and npu.is_available():
        return {"kind": "npu", "name": str(npu.get_device_name(0)), "count": int(npu.device_count())}
    return {"kind": "cpu", "name": platform.processor() or platform.machine(), "count": 0}


def environment(backends: Mapping[str, Any], run_device: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The fingerprint of this machine: versions, device, backend availability, and (``--device``) where
    the backends' calls ran."""
    from .. import __version__

    dev = device_info()
    host = socket.gethostname()
    return {
        "machine": host if dev["kind"] == "cpu" else f"{host}:{dev['name']}",
        "hostname": host,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "device": dev,
        "packages": {"dsport": __version__, **{p: _version(p) for p in ("torch", "numpy", "triton", "tilelang")}},
        "backends": {name: {"available": b.available, "reason": b.reason, "ops": len(b.ops), "env": b.env,
                            "module": b.module, "targets": b.targets}
                     for name, b in backends.items()},
        **({"run_device": dict(run_device)} if run_device else {}),
    }


def strict_json(x: Any) -> Any:
    """Strict JSON: non-finite floats become strings ('inf', 'nan')."""
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)
    if isinstance(x, Mapping):
        return {str(k): strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v) for v in x]
    return x


def build_document(rows: Iterable[ResultRow], backends: Mapping[str, Any], command: str, case_set: str,
                   extra_rows: Iterable[ResultRow] = (), run_device: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The report of a run on this machine; every reader below takes this document, never the rows."""
    env = environment(backends, run_device)
    results = [{**r.to_json(), "machine": r.machine or env["machine"]} for r in [*rows, *extra_rows]]
    doc = {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION,
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "command": command, "case_set": case_set, "environments": [env], "results": results}
    doc["summary"] = summary(results)
    return strict_json(doc)


def summary(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    counts = Counter(r["verdict"] for r in results)
    return {"counts": {v: counts.get(v, 0) for v in SEVERITY}, "ok": not any(counts.get(v) for v in FAILING)}


def write_json(doc: Mapping[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
        f.write("\n")


# -- the matrix -------------------------------------------------------------------------
def columns(doc: Mapping[str, Any]) -> list[str]:
    """Backend columns; with several machines, backend@machine."""
    multi = len({r.get("machine") for r in doc["results"]}) > 1
    seen: dict[str, None] = {}
    for r in doc["results"]:
        seen[f"{r['backend']}@{r.get('machine')}" if multi else r["backend"]] = None
    return list(seen)


def _col(r: Mapping[str, Any], multi: bool) -> str:
    return f"{r['backend']}@{r.get('machine')}" if multi else r["backend"]


def matrix(doc: Mapping[str, Any]) -> tuple[list[str], list[str], dict[tuple[str, str], Counter]]:
    multi = len({r.get("machine") for r in doc["results"]}) > 1
    cols = columns(doc)
    ops: dict[str, None] = {}
    cells: dict[tuple[str, str], Counter] = {}
    for r in doc["results"]:
        for op in r.get("ops") or [r["op"]]:  # a kernel build counts under every op it serves
            ops[op] = None
            cells.setdefault((op, _col(r, multi)), Counter())[r["verdict"]] += 1
    return list(ops), cols, cells


def cell_text(c: Counter | None) -> tuple[str, str]:
    """(text, worst verdict) of one cell."""
    if not c:
        return "-", ""
    worst = next(v for v in SEVERITY if c.get(v))
    return " ".join(f"{c[v]} {v}" for v in SEVERITY if c.get(v)), worst


def failures(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in doc["results"] if r["verdict"] in FAILING]


def print_terminal(doc: Mapping[str, Any], console: Any = None, max_failures: int = 40) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    ops, cols, cells = matrix(doc)
    table = Table(title=f"dsport conformance ({doc.get('case_set', '?')} set)", show_lines=False)
    table.add_column("op", no_wrap=True)
    for c in cols:
        table.add_column(escape(c))
    for op in ops:
        row = [op]
        for c in cols:
            text, worst = cell_text(cells.get((op, c)))
            row.append(f"[{STYLE[worst]}]{text}[/]" if worst else text)
        table.add_row(*row)
    console.print(table)
    for env in doc["environments"]:
        if env.get("run_device"):
            console.print(escape(f"calls ran on {env['run_device']['torch']} ({env['run_device']['name']}) "
                                 f"of {env['machine']}; inputs generated and judged on its CPU"), style="dim", highlight=False)
        for name, b in env["backends"].items():
            if not b["available"]:
                console.print(escape(f"{name}@{env['machine']}: skipped, {b['reason']}"), style="dim", highlight=False)
    bad = failures(doc)
    for r in bad[:max_failures]:  # reasons quote shapes like [0, -1]: never read them as markup
        seed = f" (seed {r['seed']})" if r.get("seed") is not None else ""
        console.print(f"[{STYLE[r['verdict']]}]{r['verdict'].upper()}[/] " + escape(f"{r['backend']} {r['op']}/{r['case']}{seed}: {r['reason']}"),
                      highlight=False)
        console.print(escape(f"    reproduce: {r['reproduce']}"), style="dim", highlight=False)
    if len(bad) > max_failures:
        console.print(f"... and {len(bad) - max_failures} more failing cases (see the JSON report)")
    counts = doc["summary"]["counts"]
    console.print(", ".join(f"[{STYLE[v]}]{n} {v}[/]" for v, n in counts.items() if n) or "no cases ran")
    times = backend_seconds(doc)
    if times:
        console.print("time in implementations: " + ", ".join(escape(f"{b} {t:.1f} s") for b, t in times.items()), style="dim")


def backend_seconds(doc: Mapping[str, Any]) -> dict[str, float]:
    """Seconds spent inside each backend's calls (or builds): where a slow run's time went."""
    multi = len({r.get("machine") for r in doc["results"]}) > 1
    out: dict[str, float] = {}
    for r in doc["results"]:
        if r.get("seconds") is not None and r["verdict"] not in ("skip", "unsupported"):
            out[_col(r, multi)] = out.get(_col(r, multi), 0.0) + float(r["seconds"])
    return out


# -- JUnit --------------------------------------------------------------------------------
def junit_xml(doc: Mapping[str, Any]) -> str:
    """One testsuite per backend (and machine); fail -> failure, crash/timeout -> error,
    skip/unsupported/built -> skipped (built did not execute, so it is not a pass);
    contract -> a passed testcase carrying the property verdict=contract (the
    adapter ran against a contract model, not the vendor library)."""
    root = ET.Element("testsuites", name="dsport.conformance")
    multi = len({r.get("machine") for r in doc["results"]}) > 1
    suites: dict[str, ET.Element] = {}
    for r in doc["results"]:
        col = _col(r, multi)
        s = suites.get(col)
        if s is None:
            s = suites[col] = ET.SubElement(root, "testsuite", name=f"dsport.conformance.{col}")
            s.attrib.update(tests="0", failures="0", errors="0", skipped="0", time="0")
        s.attrib["tests"] = str(int(s.attrib["tests"]) + 1)
        secs = float(r.get("seconds") or 0.0)
        s.attrib["time"] = f"{float(s.attrib['time']) + secs:.3f}"
        tc = ET.SubElement(s, "testcase", classname=f"dsport.conformance.{col}.{r['op']}", name=r["case"], time=f"{secs:.3f}")
        v = r["verdict"]
        detail = json.dumps({"metrics": r.get("metrics"), "tolerance": r.get("tolerance"), "reproduce": r.get("reproduce")}, indent=1)
        if v == "fail":
            s.attrib["failures"] = str(int(s.attrib["failures"]) + 1)
            ET.SubElement(tc, "failure", message=r.get("reason", ""), type="fail").text = detail
        elif v in ("crash", "timeout"):
            s.attrib["errors"] = str(int(s.attrib["errors"]) + 1)
            ET.SubElement(tc, "error", message=r.get("reason", ""), type=v).text = detail
        elif v in ("skip", "unsupported", "built"):
            s.attrib["skipped"] = str(int(s.attrib["skipped"]) + 1)
            ET.SubElement(tc, "skipped", message=f"{v}: {r.get('reason', '')}")
        elif v == "contract":
            ET.SubElement(ET.SubElement(tc, "properties"), "property", name="verdict", value="contract")
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


# -- Markdown -------------------------------------------------------------------------------
def markdown(doc: Mapping[str, Any], max_failures: int = 30) -> str:
    ops, cols, cells = matrix(doc)
    out = [f"### dsport conformance ({doc.get('case_set', '?')} set)", ""]
    for env in doc["environments"]:
        pk = env["packages"]
        out.append(f"- `{env['machine']}`: {env['device']['kind']} {env['device']['name']}, python {env['python']}, "
                   f"torch {pk.get('torch')}, triton {pk.get('triton')}, tilelang {pk.get('tilelang')}, dsport {pk.get('dsport')}"
                   + (f"; calls ran on `{env['run_device']['torch']}` ({env['run_device']['name']})" if env.get("run_device") else ""))
    out += ["", "| op | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for op in ops:
        row = []
        for c in cols:
            text, worst = cell_text(cells.get((op, c)))
            row.append(f"**{text}**" if worst in FAILING else text)
        out.append(f"| `{op}` | " + " | ".join(row) + " |")
    counts = doc["summary"]["counts"]
    out += ["", "Totals: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n)]
    times = backend_seconds(doc)
    if times:
        out.append("Time in implementations: " + ", ".join(f"{b} {t:.1f} s" for b, t in times.items()))
    bad = failures(doc)
    if bad:
        out += ["", "<details><summary>Failing cases</summary>", ""]
        for r in bad[:max_failures]:
            out.append(f"- **{r['verdict']}** `{r['backend']}` `{r['op']}/{r['case']}`: {r['reason']}  \n  `{r['reproduce']}`")
        if len(bad) > max_failures:
            out.append(f"- ... and {len(bad) - max_failures} more")
        out += ["", "</details>"]
    return "\n".join(out) + "\n"
