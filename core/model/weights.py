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
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import DsportError
from ..fp8 import E4M3FN
from .config import ModelConfig, to_hf
from .parallel import checkpoint_name, shard_range

log = logging.getLogger(__name__)
INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class CheckpointError(DsportError, ValueError):
    """A checkpoint does not match the model: the message names every tensor at fault."""


FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
              "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
              "F8_E4M3": torch.float8_e4m3fn, "F8_E4M3FNUZ": torch.float8_e4m3fnuz, "F8_E5M2": torch.float8_e5m2,
              "F8_E5M2FNUZ": torch.float8_e5m2fnuz}


@dataclass(frozen=True)
class Entry:
    """One tensor of the checkpoint as its shard's header describes it (nothing read yet)."""

    shard: str
    dtype: torch.dtype | str
    shape: tuple[int, ...]


def _open(file: Path):  # noqa: ANN202 - safetensors' handle
    try:
        return safe_open(file, framework="pt")
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: the file is named either way
        raise CheckpointError(f"{file}: cannot read the safetensors shard: {type(e).__name__}: {e}") from None


def _index(path: Path) -> dict[str, str] | None:
    f = path / INDEX
    if not f.exists():
        return None
    try:
        wmap = json.loads(f.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: not valid JSON: {e}") from None
    except (KeyError, TypeError):
        raise CheckpointError(f"{f}: expected an object with a 'weight_map' of tensor name -> shard file") from None
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise CheckpointError(f"{f}: 'weight_map' must map tensor names to shard file names")
    return wmap


def scan(path: Path) -> dict[str, Entry]:
    """Every tensor of the checkpoint with its shard, dtype and shape, from the
    shard headers alone. A tensor in two shards, a shard that cannot be read, and
    an index that names a tensor its shard lacks are errors naming the files."""
    path = Path(path)
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(f"{path}: refusing pickle-based weight files {pickles}; convert them to safetensors")
    wmap = _index(path)
    shards = sorted(set(wmap.values())) if wmap is not None else sorted(p.name for p in path.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{path}: no {INDEX} and no *.safetensors files")
    if wmap is not None:  # shards beside the index that it does not name may still repeat its tensors
        shards = sorted(set(shards) | {p.name for p in path.glob("*.safetensors")})
    found: dict[str, Entry] = {}
    dupes: list[str] = []
    for shard in shards:
        file = path / shard
        if not file.exists():
            raise CheckpointError(f"{path / INDEX}: names shard {shard}, which does not exist")
        with _open(file) as f:
            for name in f.keys():
                sl = f.get_slice(name)
                e = Entry(shard, _ST_DTYPES.get(sl.get_dtype(), sl.get_dtype()), tuple(sl.get_shape()))
                if name in found:
                    dupes.append(f"{name} (in {found[name].shard} and {shard})")
                    continue
                found[name] = e
    problems = []
    if dupes:
        problems.append(f"tensors stored in more than one shard (which copy is meant is ambiguous): {dupes}")
    if wmap is not None:
        absent = [f"{n} (listed in the index for {s})" for n, s in wmap.items() if n not in found or found[n].shard != s]
        if absent:
            problems.append(f"tensors named by the index but absent from their shard: {absent}")
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))
    return found


def _dequantize(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    n, k = w.shape
    s = scale.float().repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
    return w.float() * s


def _scale_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    return (-(-shape[0] // 128), -(-shape[1] // 128))


def _dt(d: torch.dtype | str) -> str:
    return str(d).removeprefix("torch.")


def _layer(name: str) -> int | None:
    parts = name.split(".")
    if name.startswith("model.layers.") and len(parts) > 2 and parts[2].isdigit():
        return int(parts[2])
    return None


def plan_load(model: torch.nn.Module, entries: dict[str, Entry], path: Path,
              stored_as: dict[str, str] | None = None) -> list[tuple[str, str | None]]:
    """Check every tensor's dtype and shape against the model before anything is read:
    (parameter, scale to dequantize it with or None) for each parameter; all problems
    are raised together in one CheckpointError. ``stored_as``: the checkpoint's name
    of a parameter whose name differs (a rank's local experts), for the messages."""
    params = dict(model.named_parameters())
    n_layers, n_extra = model.cfg.n_layers, getattr(model.cfg, "n_nextn_layers", 0)
    stored = {_layer(n) for n in entries} - {None}
    problems: list[str] = []
    if stored and max(stored) + 1 != n_layers + n_extra:  # type: ignore[operator]
        mtp = f" + {n_extra} multi-token-prediction layer(s) (num_nextn_predict_layers)" if n_extra else ""
        problems.append(f"the checkpoint stores {max(stored) + 1} layers (model.layers.0-{max(stored)}), "  # type: ignore[operator]
                        f"config.json declares num_hidden_layers = {n_layers}{mtp}")
    wrong, dtypes, unexpected = [], [], []
    todo: list[tuple[str, str | None]] = []
    consumed: set[str] = set()
    for name, p in params.items():
        e = entries.get(name)
        if e is None:
            continue  # reported as missing below
        want = tuple(p.shape)
        if p.dtype in FP8_DTYPES:  # FP8 kept as FP8: its scale is a parameter too, checked on its own
            if e.dtype not in FP8_DTYPES:
                dtypes.append(f"{name}: checkpoint {_dt(e.dtype)}, model expects an FP8 weight (e4m3fn or e4m3fnuz)")
            elif e.shape != want:
                wrong.append(f"{name}: checkpoint {e.shape}, model {want}")
            todo.append((name, None))
            continue
        if e.dtype in FP8_DTYPES:  # an FP8 weight loaded into a float parameter: dequantized with its scale
            sname = name.removesuffix("weight") + "weight_scale_inv"
            s = entries.get(sname)
            if len(e.shape) != 2:
                dtypes.append(f"{name}: checkpoint {_dt(e.dtype)} {e.shape}, but only 2-D weights are stored in FP8")
            elif s is None:
                problems.append(f"{name}: an FP8 ({_dt(e.dtype)}) weight without its scale {sname}: it cannot be dequantized")
            elif s.dtype != torch.float32:
                dtypes.append(f"{sname}: checkpoint {_dt(s.dtype)}, expected float32")
            elif s.shape != _scale_shape(e.shape):
                wrong.append(f"{sname}: checkpoint {s.shape}, expected {_scale_shape(e.shape)} (128x128 blocks of {e.shape})")
            elif e.shape != want:
                wrong.append(f"{name}: checkpoint {e.shape}, model {want}")
            consumed.add(sname)
            todo.append((name, sname))
            continue
        if e.dtype not in FLOAT_DTYPES or (p.dtype == torch.float32 and name.endswith("weight_scale_inv") and e.dtype != torch.float32):
            want_dt = "float32" if name.endswith("weight_scale_inv") else "a float dtype"
            dtypes.append(f"{name}: checkpoint {_dt(e.dtype)}, expected {want_dt}")
        elif e.shape != want:
            wrong.append(f"{name}: checkpoint {e.shape}, model {want}")
        todo.append((name, None))
    for name in entries:
        layer = _layer(name)
        if name in params or name in consumed or (layer is not None and n_layers <= layer < n_layers + n_extra):
            continue
        unexpected.append(name)
    missing = sorted((stored_as or {}).get(n, n) for n in set(params) - set(entries))
    if missing:
        problems.append(f"missing tensors: {missing}")
    if unexpected:
        problems.append(f"unexpected tensors: {sorted(unexpected)}")
    if wrong:
        problems.append(f"wrongly shaped tensors: {wrong}")
    if dtypes:
        problems.append(f"tensors of the wrong dtype: {dtypes}")
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))
    return todo


Part = tuple[str, "tuple[int, int, int] | None"]  # (checkpoint tensor, (dim, start, stop) of this rank's shard or None)


def rank_entries(model: torch.nn.Module, entries: dict[str, Entry]) -> tuple[dict[str, Entry], dict[str, Part]]:
    """The checkpoint as one rank of a parallel model sees it: keyed by the model's
    parameter names (and the scales of FP8 weights it dequantizes), with the shapes of
    this rank's shards, and where each lies in the checkpoint."""
    layout, cfg = model.parallel.layout, model.cfg
    view: dict[str, Entry] = {}
    parts: dict[str, Part] = {}
    names = [n for n, _ in model.named_parameters()]
    names += [n.removesuffix("weight") + "weight_scale_inv" for n in names if n.endswith(".weight")]
    for name in names:
        if name in view:
            continue
        ckpt = checkpoint_name(name, layout, cfg)
        e = entries.get(ckpt)
        if e is None:  # missing: plan_load names it (as the checkpoint does)
            parts[name] = (ckpt, None)
            continue
        rng = shard_range(ckpt, e.shape, layout, e.dtype in FP8_DTYPES)
        shape = e.shape
        if rng is not None:
            dim, start, stop = rng
            shape = e.shape[:dim] + (stop - start,) + e.shape[dim + 1:]
        view[name] = Entry(e.shard, e.dtype, shape)
        parts[name] = (ckpt, rng)
    # what no rank reads stays in view under its own name: plan_load skips the MTP layers and names the rest as unexpected
    read = {checkpoint_name(n, replace(layout, rank=r), cfg) for r in range(layout.world) for n in names}
    view.update({n: e for n, e in entries.items() if n not in read})
    return view, parts


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Copy every tensor of the checkpoint into ``model`` by name, after checking
    all of them (see :func:`plan_load`). An FP8 tensor (e4m3fn or e4m3fnuz)
    loaded into a float parameter is dequantized with its ``weight_scale_inv``;
    an e4m3fnuz weight kept in FP8 is converted by value to the model's e4m3fn
    (exact: every e4m3fnuz value above 2^-9 is an e4m3fn value). The
    multi-token-prediction layers after the decoder's (the release's layer 61)
    are skipped.

    One rank of a parallel model (``model.parallel``) reads only its experts and
    its slices of the split tensors (safetensors' ``get_slice``);
    ``model.loaded_bytes`` counts the bytes read."""
    path = Path(path)
    entries = scan(path)
    parts: dict[str, Part] = {n: (n, None) for n in entries}
    parallel = getattr(model, "parallel", None)
    if parallel is not None and not parallel.trivial:
        entries, parts = rank_entries(model, entries)
    todo = plan_load(model, entries, path, {n: c for n, (c, _) in parts.items() if c != n})
    params = dict(model.named_parameters())
    by_shard: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for name, sname in todo:
        by_shard[entries[name].shard].append((name, sname))
    read = 0
    for shard, items in sorted(by_shard.items()):
        with _open(path / shard) as f:
            for name, sname in items:
                t = _read(f, parts[name], path / shard)
                read += t.numel() * t.element_size()
                if sname is not None:
                    with _open(path / entries[sname].shard) as g:
                        s = _read(g, parts[sname], path / entries[sname].shard)
                        read += s.numel() * s.element_size()
                        t = _dequantize(t, s)
                params[name].data.copy_(t.to(params[name].dtype))
    model.loaded_bytes = read
    log.info("loaded %d tensors (%d bytes) from %d shard(s) of %s", len(todo), read, len(by_shard), path)


def _read(f, part: Part, file: Path) -> torch.Tensor:  # noqa: ANN001
    name, rng = part
    try:
        if rng is None:
            return f.get_tensor(name)
        dim, start, stop = rng
        sl = f.get_slice(name)  # reads only the shard's bytes
        return sl[(slice(None),) * dim + (slice(start, stop),)]
    except Exception as e:  # noqa: BLE001 - a truncated or corrupt shard: name the file and the tensor
        raise CheckpointError(f"{file}: cannot read tensor {name}: {type(e).__name__}: {e} (truncated or corrupt shard?)") from None


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
    from .transformer import Model
    from ..registry import resolve

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
    (out / "config.json").write_text(json.dumps(to_hf(cfg), indent=1))
    return out
