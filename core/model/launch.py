"""Run the model on one rank of a tensor/expert-parallel world; torchrun starts the ranks.

    torchrun --nproc-per-node 2 -m dsport.core.model.launch CHECKPOINT --config parallel.yaml \\
        --prompt 32 --batch 2 --out logits.pt

The config file is the backend-selection YAML (``backend``, ``dtype``,
``parallel: {tp, ep}``, ...). Every rank loads only its shards, runs the same
random prompt (seeded) and, with ``--generate N``, N greedy tokens; rank 0
prints them and writes the logits of the prompt and every rank's bytes read
to ``--out`` (a torch.save file).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import torch
import torch.distributed as dist

from ..config import DTYPES, config_from_args, add_config_arguments
from . import parallel as par_mod
from .transformer import Model



def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dsport.core.model.launch", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="Hugging Face-format checkpoint directory")
    p.add_argument("--prompt", type=int, default=16, help="prompt length (random token ids)")
    p.add_argument("--batch", type=int, default=1, help="sequences (a multiple of the data-parallel attention groups)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generate", type=int, default=0, metavar="N", help="greedy tokens to decode after the prompt")
    p.add_argument("--out", help="rank 0 writes {'logits', 'tokens', 'loaded_bytes'} here")
    add_config_arguments(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    par = par_mod.init(cfg.tp, cfg.ep, cfg.device)
    dtype = DTYPES[cfg.dtype] if cfg.dtype else None
    model = Model.from_pretrained(args.checkpoint, backend=cfg.backend, dtype=dtype, parallel=par)
    if cfg.device:
        device = torch.device(cfg.device)
        if device.type != "cpu" and device.index is None and not par.trivial:  # one device per rank of this host
            device = torch.device(device.type, int(os.environ.get("LOCAL_RANK", "0")))
        model.to(device)
    gen = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, model.cfg.vocab_size, (args.batch, args.prompt), generator=gen).to(model.lm_head.weight.device)
    logits = model(tokens)
    out_tokens = model.generate(tokens, args.generate) if args.generate else tokens
    loaded = torch.tensor([model.loaded_bytes], dtype=torch.int64, device=tokens.device)
    if not par.trivial:
        everyone = [torch.zeros_like(loaded) for _ in range(par.layout.world)]
        dist.all_gather(everyone, loaded)
        loaded = torch.cat(everyone)
    if par.layout.rank == 0:
        if args.generate:
            print(out_tokens[:, args.prompt:].tolist())
        if args.out:
            torch.save({"logits": logits.cpu(), "tokens": out_tokens.cpu(), "loaded_bytes": loaded.tolist()}, args.out)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
