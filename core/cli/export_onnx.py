"""``dsport export-onnx CHECKPOINT OUT.onnx [--decode]``: the V3.2 prefill graph (or one decode step, the
caches as inputs and outputs) as one ONNX file, dsport ops as ONNX local functions and FP8 weights as FP8
initializers; checked by onnx.checker, run in ONNX Runtime and its logits matched against the torch
backend on the same prompt."""
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
    p.add_argument("--seq", type=int, default=16, help="prompt length the graph is specialised to (batch 1; default 16); "
                   "with --decode, the prefill length before the step")
    p.add_argument("--decode", action="store_true", help="one decode step at position --seq: the latent and indexer caches as "
                   "inputs past.*, their written versions as outputs present.*")
    p.add_argument("--external-data", action="store_true", help="weights in OUT.data beside the graph (models over 2 GB)")
    p.add_argument("--config", metavar="FILE", help="a config file whose onnx: section (opset, providers, threads) applies")
    p.add_argument("--no-verify", action="store_true", help="only write and check the file; do not run it against torch")


def run(args: argparse.Namespace) -> int:
    from ..config import load_config as load_settings
    from ..registry import load

    from ..errors import ConfigError

    try:
        options = load_settings(args.config, env={}).backend_options.get("onnx") if args.config else None
    except ConfigError as e:
        print(f"dsport export-onnx: {e}", file=sys.stderr)
        return 2
    b = load("onnx", options=options)  # the section (defaults without one) < $DSPORT_ONNX_*
    ok, why = b.ok, b.reason
    if not ok:
        print(f"dsport export-onnx: the onnx backend is not available: {why}", file=sys.stderr)
        return 2
    least = 1 if args.decode else 2
    if args.seq < least:
        why = "a decode step follows at least one prefilled token" if args.decode else "a prefill; length 1 is a decode step"
        print(f"dsport export-onnx: --seq must be >= {least} ({why}), got {args.seq}", file=sys.stderr)
        return 2
    from ...backends.onnx import export

    res = (export.export_decode if args.decode else export.export_prefill)(args.checkpoint, args.out, args.seq, args.external_data)
    what = f"decode step at position {args.seq}" if args.decode else f"prefill of {args.seq} tokens"
    print(f"wrote {res.path} ({what}; {res.bytes / 2**20:.1f} MiB, opset {res.opset}) in {res.seconds:.1f} s: "
          f"{res.calls} dsport op calls over {res.functions} local functions; onnx.checker: ok")
    if args.no_verify:
        return 0
    return (_verify_decode if args.decode else _verify_prefill)(args, res)


def _verdict(fp8: bool, vs_eager: float, vs_torch: float, t_ort: float, extra: str = "") -> int:
    ok = vs_eager > MIN_COSINE and (fp8 or vs_torch > MIN_COSINE)
    need = "vs eager onnx" + ("" if fp8 else " and vs torch")
    print(f"{need}: every position{extra} must exceed {MIN_COSINE}" + (" (FP8 weights: vs torch is reported, the op numerics "
          "are judged by dsport conformance --model --backends onnx)" if fp8 else "") + f": {'pass' if ok else 'fail'}")
    return 0 if ok else 1


def _verify_prefill(args: argparse.Namespace, res: object) -> int:
    import time

    from ...backends.onnx import export
    from ..model.config import load_config

    cfg = load_config(args.checkpoint)
    tokens = export.prompt(cfg.vocab_size, args.seq, export.TRACE_SEED + 1)  # not the traced prompt
    t0 = time.perf_counter()
    got = export.run_exported(res.path, tokens)
    t_ort = time.perf_counter() - t0
    vs_eager = export.per_position_cosine(got, export.eager_onnx_logits(args.checkpoint, tokens))
    vs_torch = export.per_position_cosine(got, export.torch_logits(args.checkpoint, tokens))
    print(f"onnxruntime {t_ort:.2f} s on a prompt other than the traced one; per-position logits cosine (min / median): "
          f"vs the onnx backend run eagerly {vs_eager.min().item():.7f} / {vs_eager.median().item():.7f}, "
          f"vs the torch backend {vs_torch.min().item():.7f} / {vs_torch.median().item():.7f}")
    return _verdict(cfg.fp8_weights, vs_eager.min().item(), vs_torch.min().item(), t_ort)


def _verify_decode(args: argparse.Namespace, res: object) -> int:
    """Prefill a prompt other than the traced one on each reference (torch; the onnx backend run eagerly), hand
    its caches to the exported step, and compare the step's logits and written caches with the reference's."""
    import time

    from ...backends.onnx import export
    from ..model.config import load_config

    cfg = load_config(args.checkpoint)
    tokens = export.prompt(cfg.vocab_size, args.seq, export.TRACE_SEED + 1)
    token = export.prompt(cfg.vocab_size, 1, export.TRACE_SEED + 2)
    cos: dict[str, tuple[float, float]] = {}
    t_ort = 0.0
    for label, ops in (("torch", None), ("eager onnx", export.eager_onnx_ops())):
        before, want, after = export.decode_after_prefill(args.checkpoint, tokens, token, ops)
        t0 = time.perf_counter()
        got, present = export.run_exported_decode(res.path, token, before)
        t_ort = time.perf_counter() - t0
        caches = min(export.cache_cosine(present[n], after[n]) for n in after)
        cos[label] = (export.per_position_cosine(got, want).min().item(), caches)
    print(f"onnxruntime {t_ort:.2f} s for the step, on caches of a prompt other than the traced one; logits cosine / min "
          f"cosine of the written caches: vs the onnx backend run eagerly {cos['eager onnx'][0]:.7f} / {cos['eager onnx'][1]:.7f}, "
          f"vs the torch backend {cos['torch'][0]:.7f} / {cos['torch'][1]:.7f}")
    return _verdict(cfg.fp8_weights, min(cos["eager onnx"]), min(cos["torch"]), t_ort, " and every written cache")
