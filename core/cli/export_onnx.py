"""``dsport export-onnx CHECKPOINT OUT.onnx``: the V3.2 prefill graph as one ONNX file, dsport ops as
ONNX local functions and FP8 weights as FP8 initializers; checked by onnx.checker, run in ONNX Runtime
and its logits matched against the torch backend on the same prompt."""
from __future__ import annotations

import argparse
import sys

MIN_COSINE = 0.9999
"""Per-position logits cosine the exported graph must keep at every position against (a) the same model run
eagerly on the onnx backend (the export is faithful) and, for float weights, (b) the torch backend. With FP8
weights (b) is reported, not required: one FP8 code apart in an activation is a 1/16 to 1/8 relative step that a
near-tied expert or top-k key can amplify, so the onnx ops' numerics are judged op by op instead, by
``dsport conformance --model --backends onnx``."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a Hugging Face-format V3.2 checkpoint folder (e.g. from dsport make-checkpoint)")
    p.add_argument("out", help="the .onnx file to write")
    p.add_argument("--seq", type=int, default=16, help="prompt length the graph is specialised to (batch 1; default 16)")
    p.add_argument("--external-data", action="store_true", help="weights in OUT.data beside the graph (models over 2 GB)")
    p.add_argument("--no-verify", action="store_true", help="only write and check the file; do not run it against torch")


def run(args: argparse.Namespace) -> int:
    from ...backends import onnx as backend

    ok, why = backend.available()
    if not ok:
        print(f"dsport export-onnx: the onnx backend is not available: {why}", file=sys.stderr)
        return 2
    if args.seq < 2:
        print(f"dsport export-onnx: --seq must be >= 2 (a prefill; length 1 is a decode step), got {args.seq}", file=sys.stderr)
        return 2
    import time

    from ...backends.onnx import export
    from ..model.config import load_config

    try:
        res = export.export_prefill(args.checkpoint, args.out, args.seq, args.external_data)
    except export.ExportLimit as e:
        print(f"dsport {e}", file=sys.stderr)
        return 2
    print(f"wrote {res.path} ({res.bytes / 2**20:.1f} MiB, opset {res.opset}) in {res.seconds:.1f} s: "
          f"{res.calls} dsport op calls over {res.functions} local functions; onnx.checker: ok")
    if args.no_verify:
        return 0
    cfg = load_config(args.checkpoint)
    tokens = export.prompt(cfg.vocab_size, args.seq, export.TRACE_SEED + 1)  # not the traced prompt
    t0 = time.perf_counter()
    got = export.run_exported(res.path, tokens)
    t_ort = time.perf_counter() - t0
    vs_eager = export.per_position_cosine(got, export.eager_onnx_logits(args.checkpoint, tokens))
    vs_torch = export.per_position_cosine(got, export.torch_logits(args.checkpoint, tokens))
    fp8 = cfg.fp8_weights
    ok = vs_eager.min().item() > MIN_COSINE and (fp8 or vs_torch.min().item() > MIN_COSINE)
    print(f"onnxruntime {t_ort:.2f} s on a prompt other than the traced one; per-position logits cosine (min / median): "
          f"vs the onnx backend run eagerly {vs_eager.min().item():.7f} / {vs_eager.median().item():.7f}, "
          f"vs the torch backend {vs_torch.min().item():.7f} / {vs_torch.median().item():.7f}")
    need = "vs eager onnx" + ("" if fp8 else " and vs torch")
    print(f"{need}: every position must exceed {MIN_COSINE}" + (" (FP8 weights: vs torch is reported, the op numerics are "
          "judged by dsport conformance --model --backends onnx)" if fp8 else "") + f": {'pass' if ok else 'fail'}")
    return 0 if ok else 1
