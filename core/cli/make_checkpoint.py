"""``dsport make-checkpoint DIR``: a small random checkpoint in the Hugging
Face DeepSeek-V3.2 format (config.json, safetensors shards, index json)."""
from __future__ import annotations

import argparse
from dataclasses import replace

from ..model.config import load_config, tiny_config
from ..model.weights import make_checkpoint


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="output folder")
    p.add_argument("--config", help="a config.json to copy the shape from (default: a tiny V3.2 config)")
    p.add_argument("--bf16", action="store_true", help="bf16 weights instead of FP8 128x128-block weights")
    p.add_argument("--dense", action="store_true", help="no indexer: a V3 / V3.1-style config with dense MLA")
    p.add_argument("--layers", type=int, help="number of decoder layers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shards", type=int, default=2)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config) if args.config else tiny_config()
    cfg = replace(cfg, fp8_weights=not args.bf16)
    if args.dense:
        cfg = replace(cfg, index_n_heads=0)
    if args.layers:
        cfg = replace(cfg, n_layers=args.layers)
    out = make_checkpoint(args.dir, cfg, seed=args.seed, shards=args.shards)
    print(f"wrote {out} ({'bf16' if args.bf16 else 'fp8'} weights, {cfg.n_layers} layers, {'dense' if args.dense else 'sparse'} MLA)")
    return 0
