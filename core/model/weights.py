"""Checkpoint I/O in the Hugging Face DeepSeek-V3.2 format: ``config.json``,
safetensors shards and ``model.safetensors.index.json``.

Loading is lazy: one shard open at a time, one tensor read at a time, so a
671B checkpoint is never in memory at once. Pickle-based files are refused
(never unpickled). Missing, unexpected and wrongly-shaped tensors are reported
by name, all together.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dsport.core.errors import DsportError
from dsport.core.fp8 import E4M3FN
from dsport.core.model.config import ModelConfig

log = logging.getLogger(__name__)
INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class CheckpointError(DsportError, ValueError):
    """A checkpoint does not match the model: the message names every tensor at fault."""


def _weight_map(path: Path) -> dict[str, str]:
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(f"{path}: refusing pickle-based weight files {pickles}; convert them to safetensors")
    if (path / INDEX).exists():
        return json.loads((path / INDEX).read_text())["weight_map"]
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{path}: no {INDEX} and no *.safetensors files")
    out: dict[str, str] = {}
    for s in shards:
        with safe_open(s, framework="pt") as f:
            out.update({k: s.name for k in f.keys()})
    return out


def _dequantize(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    n, k = w.shape
    s = scale.float().repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
    return w.float() * s


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Copy every tensor of the checkpoint into ``model`` by name. An FP8 tensor
    loaded into a float parameter is dequantized with its ``weight_scale_inv``;
    layers beyond the model (the MTP layer of the release) are skipped."""
    params = dict(model.named_parameters())
    n_layers = model.cfg.n_layers
    wmap = _weight_map(path)
    by_shard: dict[str, list[str]] = defaultdict(list)
    for name, shard in wmap.items():
        by_shard[shard].append(name)
    loaded, unexpected, wrong = set(), [], []
    for shard, names in sorted(by_shard.items()):
        with safe_open(path / shard, framework="pt") as f:
            for name in sorted(names):
                parts = name.split(".")
                if name.startswith("model.layers.") and int(parts[2]) >= n_layers:
                    continue
                if name not in params:
                    if name.endswith("weight_scale_inv") and name.replace("weight_scale_inv", "weight") in params:
                        continue  # consumed when its weight is dequantized
                    unexpected.append(name)
                    continue
                t, p = f.get_tensor(name), params[name]
                if t.dtype == torch.float8_e4m3fn and p.dtype != t.dtype:
                    sname = name.replace(".weight", ".weight_scale_inv")
                    with safe_open(path / wmap[sname], framework="pt") as g:
                        t = _dequantize(t, g.get_tensor(sname))
                if tuple(t.shape) != tuple(p.shape):
                    wrong.append(f"{name}: checkpoint {tuple(t.shape)}, model {tuple(p.shape)}")
                    continue
                p.data.copy_(t.to(p.dtype))
                loaded.add(name)
    missing = sorted(set(params) - loaded)
    problems = []
    if missing:
        problems.append(f"missing tensors: {missing}")
    if unexpected:
        problems.append(f"unexpected tensors: {sorted(unexpected)}")
    if wrong:
        problems.append(f"wrongly shaped tensors: {wrong}")
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))
    log.info("loaded %d tensors from %d shard(s) of %s", len(loaded), len(by_shard), path)


def _quantize_block(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """128x128-block FP8 (e4m3fn) quantization with fp32 scales, as the release stores weights."""
    n, k = w.shape
    pad = torch.zeros(-(-n // 128) * 128, -(-k // 128) * 128)
    pad[:n, :k] = w.float()
    blocks = pad.view(pad.shape[0] // 128, 128, pad.shape[1] // 128, 128)
    scale = blocks.abs().amax(dim=(1, 3)).clamp_min(1e-4) / E4M3FN.max
    q = E4M3FN.cast(blocks / scale[:, None, :, None]).view(pad.shape)[:n, :k].contiguous()
    return q, scale


def make_checkpoint(out: str | Path, cfg: ModelConfig, seed: int = 0, shards: int = 2) -> Path:
    """Write a random checkpoint of ``cfg`` in the Hugging Face format: FP8
    block-quantized projections when ``cfg.fp8_weights``, bf16 otherwise.
    Initialization keeps activations O(1) through the layers."""
    from dsport.core.model.transformer import Model
    from dsport.core.registry import resolve

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    skeleton = Model(cfg, resolve("reference", validate=False), torch.bfloat16)  # names and shapes
    tensors: dict[str, torch.Tensor] = {}
    for name, p in skeleton.named_parameters():
        if name.endswith("weight_scale_inv"):
            continue  # written with its weight
        if p.dim() == 1:  # norm weights near 1, biases near 0, kept in float32
            base = 1.0 if name.endswith("norm.weight") else 0.0
            tensors[name] = base + 0.05 * torch.randn(p.shape, generator=gen)
        elif "embed_tokens" in name:
            tensors[name] = torch.randn(p.shape, generator=gen).bfloat16()
        else:
            w = torch.randn(p.shape, generator=gen) * p.shape[1] ** -0.5
            if p.dtype == torch.float8_e4m3fn:
                tensors[name], tensors[name + "_scale_inv"] = _quantize_block(w)
            else:
                tensors[name] = w.bfloat16()
    names = sorted(tensors)
    wmap = {}
    for i in range(shards):
        part = names[i::shards]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k].contiguous() for k in part}, str(out / fname))
        wmap.update({k: fname for k in part})
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                                         "weight_map": wmap}, indent=1))
    (out / "config.json").write_text(json.dumps(cfg.to_hf(), indent=1))
    return out
