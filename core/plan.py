"""Memory plan of one deployment: per-rank bytes of weights, caches and
activations for a model config split over tensor- and expert-parallel ranks,
and whether that fits an accelerator of ``core/profile/hardware.yaml``.

The weight list is the model's own: names and shapes come from the
parameters of :class:`dsport.core.model.transformer.Model` (built on the meta
device, so nothing is allocated), which mirror the Hugging Face checkpoint.
Storage dtypes are the release checkpoint's: FP8 e4m3fn projections with
their fp32 128x128-block ``weight_scale_inv``; bf16 for everything else
(embedding, LM head, norms, router weight, indexer ``weights_proj``), except
the router's fp32 ``e_score_correction_bias``. (DeepSeek's inference code
states the bf16 LM head and ``weights_proj`` in comments; that the indexer's
``k_norm`` is bf16 too is assumed, 512 B a layer either way.) The MTP layer
the release also ships (``model.layers.61``) is not counted: the model does
not load it.

How ranks split the model follows DeepSeek's own inference code
(``inference/model.py`` and ``convert.py`` of DeepSeek-V3.2-Exp), where one
``world_size`` is both the tensor- and the expert-parallel degree; here the
two may differ:

* attention, ``tp``-way: ``q_b_proj`` and ``kv_b_proj`` column-split (heads),
  ``o_proj`` row-split; ``q_a_proj``, ``kv_a_proj_with_mqa``, the norms and
  the whole indexer replicated (DeepSeek's ``Indexer`` uses plain ``Linear``).
* dense MLP layers and the shared expert, ``tp``-way: gate/up column-split,
  down row-split.
* routed experts, ``ep``-way: each rank holds ``n_routed_experts / ep`` whole
  experts; the router (gate weight and bias) is replicated.
* embedding and LM head, ``tp``-way over the vocabulary.

The world is ``max(tp, ep)`` ranks (the smaller degree divides the larger):
with ``ep > tp`` attention runs data-parallel over ``ep / tp`` groups (each
holds the caches of its share of the batch); with ``tp > ep`` the experts
are replicated ``tp / ep`` times. The latent cache (656 B per token and
layer: FlashMLA's FP8 layout) and the indexer key cache (132 B) cannot be
split by heads: every rank of a tensor-parallel group holds the caches of all
of the group's sequences.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import torch

from .constants import ModelConfig
from .errors import ValidationError

OP = "dsport plan"
LATENT_CACHE_BYTES = 656   # per token and layer: 512 fp8 latent + 4 fp32 scales + 64 bf16 rope dims (mla_cache_pack)
INDEX_CACHE_BYTES = 132    # per token and layer: 128 fp8 key dims + 1 fp32 scale (index_cache_pack)
ACT_BYTES = 2              # bf16 activations between ops on an accelerator
GIB = float(1 << 30)


@dataclass(frozen=True)
class Split:
    """How one tensor is divided: ``tp`` along ``dim``, by expert over ``ep``, or not at all."""

    kind: str          # "replicated" | "tp" | "ep"
    dim: int = 0


# (name pattern, split), first match wins; names are the checkpoint's
SPLITS: tuple[tuple[str, Split], ...] = (
    (r"\.mlp\.experts\.\d+\.", Split("ep")),
    (r"\.self_attn\.(q_b_proj|kv_b_proj)\.", Split("tp", 0)),
    (r"\.self_attn\.o_proj\.", Split("tp", 1)),
    (r"\.mlp\.(shared_experts\.)?(gate_proj|up_proj)\.", Split("tp", 0)),
    (r"\.mlp\.(shared_experts\.)?down_proj\.", Split("tp", 1)),
    (r"^model\.embed_tokens\.|^lm_head\.", Split("tp", 0)),
)


_SPLITS = tuple((re.compile(p), s) for p, s in SPLITS)


def split_of(name: str) -> Split:
    return next((s for pattern, s in _SPLITS if pattern.search(name)), Split("replicated"))


def storage_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    """The release checkpoint's dtype of a tensor the model holds as ``model_dtype``."""
    if model_dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz) or name.endswith("weight_scale_inv"):
        return model_dtype
    return torch.float32 if name.endswith("e_score_correction_bias") else torch.bfloat16


@dataclass(frozen=True)
class WeightTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    split: Split

    @property
    def bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@cache
def _param_kinds(cfg: ModelConfig) -> tuple[tuple[str, tuple[int, ...], torch.dtype, tuple[int, ...]], ...]:
    """(name with ``{i}`` for the layer, shape, dtype, layers) of every model
    parameter, from a meta-device model with one dense and one MoE layer: the
    other layers repeat their names and shapes."""
    from .model.transformer import Model
    from .registry import resolve

    kinds = [i for i in (0, cfg.n_dense_layers) if i < cfg.n_layers]
    small = replace(cfg, n_layers=max(kinds) + 1)
    with torch.device("meta"):
        model = Model(small, resolve("reference", validate=False), torch.bfloat16)
    out = []
    for name, p in model.named_parameters():
        m = re.match(r"model\.layers\.(\d+)\.(.*)", name)
        if not m:
            out.append((name, tuple(p.shape), p.dtype, ()))
        elif int(m.group(1)) in kinds:
            dense = int(m.group(1)) < cfg.n_dense_layers
            layers = range(cfg.n_dense_layers) if dense else range(cfg.n_dense_layers, cfg.n_layers)
            out.append((f"model.layers.{{i}}.{m.group(2)}", tuple(p.shape), p.dtype, tuple(layers)))
    return tuple(out)


@cache
def weights(cfg: ModelConfig) -> tuple[WeightTensor, ...]:
    """Every tensor of the checkpoint the model loads, in the release's storage dtypes."""
    out = []
    for template, shape, dtype, layers in _param_kinds(cfg):
        for name in ([template.format(i=i) for i in layers] if layers else [template]):
            out.append(WeightTensor(name, shape, storage_dtype(name, dtype), split_of(name)))
    return tuple(out)


def _weight_kinds(cfg: ModelConfig) -> list[tuple[WeightTensor, int]]:
    """One WeightTensor per distinct parameter (its first layer's name) and how many layers repeat it."""
    out = []
    for template, shape, dtype, layers in _param_kinds(cfg):
        name = template.format(i=layers[0]) if layers else template
        out.append((WeightTensor(name, shape, storage_dtype(name, dtype), split_of(name)), max(1, len(layers))))
    return out


def check_world(tp: int, ep: int, op: str = OP) -> None:
    """Positive degrees, one dividing the other: the world is max(tp, ep) ranks (``op`` names the caller)."""
    flag = (lambda k: f"--{k}") if op == OP else (lambda k: f"parallel.{k}")
    for key, v in (("tp", tp), ("ep", ep)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            kind = "tensor" if key == "tp" else "expert"
            raise ValidationError(op, flag(key), f"a positive {kind}-parallel degree (an integer)", repr(v))
    if max(tp, ep) % min(tp, ep):
        raise ValidationError(op, f"{flag('tp')}/{flag('ep')}", "one degree dividing the other (the world is max(tp, ep) ranks)",
                              f"tp={tp}, ep={ep}")


def check_degrees(cfg: ModelConfig, tp: int, ep: int, op: str = OP) -> None:
    """The rules a (tp, ep) split of ``cfg`` obeys, for the memory plan and the parallel model alike."""
    flag = (lambda k: f"--{k}") if op == OP else (lambda k: f"parallel.{k}")
    if isinstance(tp, int) and tp > 0 and cfg.n_heads % tp:
        raise ValidationError(op, flag("tp"), f"a divisor of n_heads={cfg.n_heads} (attention heads are split tp-way)", tp)
    if isinstance(ep, int) and ep > 0 and cfg.n_routed_experts % ep:
        raise ValidationError(op, flag("ep"), f"a divisor of n_routed_experts={cfg.n_routed_experts} "
                              "(each rank holds whole experts)", ep)
    check_world(tp, ep, op)


_EXPERT = re.compile(r"\.experts\.(\d+)\.")


def rank_bytes(t: WeightTensor, cfg: ModelConfig, tp: int, ep: int) -> int:
    """Bytes of ``t`` on one rank (rank 0; every rank holds the same amount)."""
    if t.split.kind == "ep":
        return t.bytes if int(_EXPERT.search(t.name).group(1)) < cfg.n_routed_experts // ep else 0
    if t.split.kind == "tp" and tp > 1:
        d = t.shape[t.split.dim]
        if d % tp:
            raise ValidationError(OP, "--tp", f"a degree dividing dim {t.split.dim} of {t.name} "
                                  f"(shape {list(t.shape)}), as DeepSeek's convert.py requires", tp)
        return t.bytes // tp
    return t.bytes


GROUPS = (  # (label, name pattern) for the weight rows of the report, first match wins
    ("routed experts (FP8 + scales)", r"\.mlp\.experts\."),
    ("shared experts (FP8 + scales)", r"\.mlp\.shared_experts\."),
    ("dense MLP layers (FP8 + scales)", r"\.mlp\.(gate|up|down)_proj\."),
    ("router (bf16 weight, fp32 bias)", r"\.mlp\.gate\."),
    ("indexer (FP8 + scales, bf16 weights_proj, k_norm)", r"\.self_attn\.indexer\."),
    ("attention projections (FP8 + scales)", r"\.self_attn\.\w+_proj\w*\."),
    ("embedding + LM head (bf16)", r"^model\.embed_tokens\.|^lm_head\."),
    ("norms (bf16)", r"norm"),
)


_GROUPS = tuple((label, re.compile(p)) for label, p in GROUPS)


def group_of(name: str) -> str:
    return next((label for label, pattern in _GROUPS if pattern.search(name)), "other")


@dataclass
class MemoryPlan:
    cfg: ModelConfig
    tp: int
    ep: int
    context: int
    batch: int
    chunk: int
    weights: dict[str, int] = field(default_factory=dict)       # group -> bytes on one rank
    caches: dict[str, int] = field(default_factory=dict)
    activations: dict[str, int] = field(default_factory=dict)   # phase -> peak bytes
    activation_terms: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def world(self) -> int:
        return max(self.tp, self.ep)

    @property
    def dp(self) -> int:
        """Data-parallel attention groups: each holds the caches of its share of the batch."""
        return self.world // self.tp

    @property
    def local_batch(self) -> int:
        return -(-self.batch // self.dp)

    @property
    def weight_bytes(self) -> int:
        return sum(self.weights.values())

    @property
    def cache_bytes(self) -> int:
        return sum(self.caches.values())

    @property
    def total(self) -> int:
        return self.weight_bytes + self.cache_bytes + max(self.activations.values(), default=0)


def _activation_terms(cfg: ModelConfig, tp: int, ep: int, tokens: int, context: int) -> dict[str, int]:
    """Largest live tensors of one decoder layer for ``tokens`` new tokens
    attending ``context`` keys, on one rank (bf16 between ops, fp32 where the
    kernels produce fp32). Layers run one after another, so one layer's
    transients plus the residual stream is the peak. MoE rows assume uniform
    routing (expected rows per local expert), not the worst case."""
    t, h = tokens, cfg.n_heads // tp
    a = ACT_BYTES
    attn = {
        "q latent + q heads + absorbed q": t * (cfg.q_lora_rank + h * cfg.qk_head_dim + h * cfg.d_qk) * a,
        "kv latent + rope": t * cfg.d_qk * a,
        "attention out (latent) + lse + o": t * h * (cfg.d_v * a + 4 + cfg.v_head_dim * a),
    }
    if cfg.sparse:
        attn["indexer q (fp8) + head weights"] = t * cfg.index_n_heads * (cfg.index_head_dim + 4)
        attn["indexer logits [T, S] fp32"] = t * context * 4
        attn["top-k indices"] = t * cfg.index_topk * 4
    else:
        attn["dense scores [T, S] fp32 per head"] = t * h * context * 4
    rows = t * cfg.n_activated_experts * (cfg.n_routed_experts // ep) / cfg.n_routed_experts
    inter_shared = cfg.n_shared_experts * cfg.moe_inter_dim // tp
    moe = {
        "routing weights + ids": t * cfg.n_activated_experts * 8,
        "routed rows: input (fp8) + gate/up + down out": int(rows * (cfg.dim + 2 * cfg.moe_inter_dim * a + cfg.dim * 4)),
        "shared expert gate/up + out": t * (2 * inter_shared * a + cfg.dim * 4),
    }
    dense = {"dense MLP gate/up + out": t * (2 * (cfg.inter_dim // tp) * a + cfg.dim * 4)}
    resid = {"residual stream + normed input": 2 * t * cfg.dim * a}
    blocks = {"attention": sum(attn.values()), "moe": sum(moe.values()), "dense": sum(dense.values())}
    peak_block = max(blocks, key=blocks.get)
    chosen = {"attention": attn, "moe": moe, "dense": dense}[peak_block]
    return {**resid, **{f"{peak_block}: {k}": v for k, v in chosen.items()}}


def plan(cfg: ModelConfig, tp: int = 1, ep: int = 1, context: int = 8192, batch: int = 1, chunk: int = 4096) -> MemoryPlan:
    check_degrees(cfg, tp, ep)
    for arg, v in (("--context", context), ("--batch", batch), ("--chunk", chunk)):
        if v < 1:
            raise ValidationError(OP, arg, "a positive integer", v)
    p = MemoryPlan(cfg, tp, ep, context, batch, chunk)
    for t, repeats in _weight_kinds(cfg):
        g = group_of(t.name)
        p.weights[g] = p.weights.get(g, 0) + repeats * rank_bytes(t, cfg, tp, ep)
    tokens = p.local_batch * context * cfg.n_layers
    p.caches["latent cache (656 B/token/layer)"] = tokens * LATENT_CACHE_BYTES
    if cfg.sparse:
        p.caches["indexer key cache (132 B/token/layer)"] = tokens * INDEX_CACHE_BYTES
    prefill_tokens = min(chunk, context)
    for phase, t in (("prefill", prefill_tokens), ("decode", p.local_batch)):
        terms = _activation_terms(cfg, tp, ep, t, context)
        p.activation_terms[phase] = terms
        p.activations[phase] = sum(terms.values())
    return p


def hardware_memory(name: str) -> tuple[str, float]:
    """(table name, bytes) of an accelerator in hardware.yaml; an unknown name is a named error with the closest match."""
    from .profile.hardware import table

    devices = table()
    folded = {k.lower().replace("-", "").replace(" ", ""): k for k in devices}
    key = folded.get(name.lower().replace("-", "").replace(" ", ""))
    if key is None:
        close = difflib.get_close_matches(name, list(devices), n=1, cutoff=0.4)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValidationError(OP, "--hardware", f"one of {sorted(devices)}{hint}", name)
    mem = devices[key]["memory"]
    if mem is None:
        raise ValidationError(OP, "--hardware", "a device whose memory hardware.yaml states", key)
    return key, float(mem)


SAFETENSORS_DTYPES = {"F8_E4M3": torch.float8_e4m3fn, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
                      "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}


def checkpoint_tensors(path: str | Path) -> tuple[dict[str, tuple[tuple[int, ...], torch.dtype]], int]:
    """(shape, dtype) of every tensor in a checkpoint folder's safetensors files, read
    from their headers only, and the bytes those headers take (8-byte length + JSON)."""
    import json
    import struct

    tensors, header = {}, 0
    for f in sorted(Path(path).glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            meta = json.loads(fh.read(n))
        header += 8 + n
        for name, info in meta.items():
            if name != "__metadata__":
                tensors[name] = (tuple(info["shape"]), SAFETENSORS_DTYPES[info["dtype"]])
    return tensors, header


def resident_bytes(module: torch.nn.Module) -> dict[str, int]:
    """Bytes of the tensors a loaded model holds, by kind: parameters split
    into fp8 weights, their fp32 scales and everything else, and tensors
    cached on modules outside the parameters (caches and derived copies),
    each storage counted once."""
    seen: set[int] = set()
    out: dict[str, int] = {}

    def add(kind: str, t: torch.Tensor) -> None:
        key = t.untyped_storage().data_ptr()
        if key in seen or t.device.type == "meta":
            return
        seen.add(key)
        out[kind] = out.get(kind, 0) + t.untyped_storage().nbytes()

    for name, p in module.named_parameters():
        kind = ("fp8 weights" if p.dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
                else "fp8 scales" if name.endswith("weight_scale_inv") else f"other parameters ({str(p.dtype).removeprefix('torch.')})")
        add(kind, p)
    for mname, m in module.named_modules():
        for attr, v in vars(m).items():
            if attr.startswith("_parameters") or attr == "_buffers" or attr == "_modules":
                continue
            for t in (v if isinstance(v, (tuple, list)) else (v,)):
                if isinstance(t, torch.Tensor):
                    add(f"module attribute {type(m).__name__}.{attr}", t)
    return out


FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)


def _kind(name: str, dtype: torch.dtype) -> str:
    if dtype in FP8_DTYPES:
        return "fp8 weights"
    return "fp8 scales" if name.endswith("weight_scale_inv") else "other tensors"


def compare_with_checkpoint(path: str | Path, tokens: int = 8, backend: str = "torch") -> dict[str, dict[str, int]]:
    """Weight bytes of a checkpoint three ways, by kind: the plan (tp = ep = 1,
    the release's storage dtypes), the safetensors files, and what the loaded
    model holds, after loading and after one forward of ``tokens`` tokens
    (derived copies and caches appear then)."""
    from .model.config import load_config
    from .model.transformer import Model

    cfg = load_config(path)
    out: dict[str, dict[str, int]] = {"plan": {}, "files": {}}
    for t in weights(cfg):
        k = _kind(t.name, t.dtype)
        out["plan"][k] = out["plan"].get(k, 0) + t.bytes
    files, header = checkpoint_tensors(path)
    for name, (shape, dtype) in files.items():
        k = _kind(name, dtype)
        out["files"][k] = out["files"].get(k, 0) + math.prod(shape) * dtype.itemsize
    out["files"]["safetensors headers"] = header
    out["files"]["file sizes"] = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
    model = Model.from_pretrained(path, backend=backend)
    out["after load"] = resident_bytes(model)
    model(torch.zeros(1, tokens, dtype=torch.long))
    out["after a forward"] = resident_bytes(model)
    return out
