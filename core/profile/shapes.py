"""Profile shapes: for each op, the calls DeepSeek-V3.2 makes in a prefill
chunk and in a decode step, built from the model constants as spec
:class:`~dsport.core.spec.Case` objects (tagged ``profile`` and the phase), so
they carry the same seeds, validation and FLOP/byte models as every other case.

Head dims, latent widths, the 2048-key top-k and the 8-of-256 routing are
always DeepSeek's; only token counts, context lengths and the per-rank expert
slice change with the :class:`Scale`, because a 2-core CPU cannot run a
4096-token chunk through 128 heads in a profile run. Each profile case also
has a ``check`` case: the same maker at a reduced :class:`Scale`, used for the
accuracy gate where the float64 reference would be too slow at full size.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..constants import DEEPSEEK_V32 as V
from ..fp8 import FP8_FORMATS
from ..spec import Case, cdiv

Gen = torch.Generator
Maker = Callable[[Gen], dict[str, Any]]
PHASES = ("prefill", "decode")
PAGE = 64  # FlashMLA / DeepGEMM paged-cache block size


@dataclass(frozen=True)
class Scale:
    """Token counts and per-rank slices; everything else is the model's."""

    name: str
    prefill_tokens: int      # tokens in one prefill chunk
    decode_batch: int        # sequences in one decode step (one new token each)
    context: int             # keys already cached per sequence (sparse/indexer ops)
    dense_context: int       # keys for the O(T*S) dense MLA prefill
    local_experts: int       # experts held by this rank (EP): 256 / EP degree
    moe_inter: int           # per-rank slice of moe_inter_dim (2048 unsliced)

    def describe(self) -> str:
        return (f"{self.name}: prefill chunk {self.prefill_tokens} tokens, decode batch {self.decode_batch}, "
                f"context {self.context}, dense-prefill context {self.dense_context}, "
                f"{self.local_experts} local experts, expert width {self.moe_inter}")


# A GPU rank serving V3.2: 4096-token prefill chunks, 64 sequences per decode step,
# EP32 (8 of 256 experts per rank), unsliced experts.
DEVICE = Scale("device", 4096, 64, 8192, 8192, V.n_routed_experts // 32, V.moe_inter_dim)
# The same calls with CPU-feasible token counts; expert width sliced 8-way (TP8) so one
# grouped GEMM stays under a second on two cores.
CPU = Scale("cpu", 16, 4, 4096, 1024, V.n_routed_experts // 32, V.moe_inter_dim // 8)


def check_scale(s: Scale) -> Scale:
    """The reduced scale the float64 reference can judge quickly."""
    return replace(s, name=f"{s.name}-check", prefill_tokens=min(s.prefill_tokens, 4), decode_batch=min(s.decode_batch, 2),
                   context=min(s.context, 2560), dense_context=min(s.dense_context, 256), moe_inter=min(s.moe_inter, 128))


# -- tensor builders ---------------------------------------------------------------------------
def _bf16(g: Gen, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=g) * scale).to(torch.bfloat16)


def _fp8(g: Gen, *shape: int, fmt: str = "e4m3fn") -> torch.Tensor:
    f = FP8_FORMATS[fmt]
    return (torch.randn(*shape, generator=g) * f.max / 8).clamp(-f.max, f.max).to(f.dtype)


def _pow2(g: Gen, *shape: int, lo: int = -8, hi: int = 0) -> torch.Tensor:
    return torch.exp2(torch.randint(lo, hi, shape, generator=g).float())


def _as_bytes(t: torch.Tensor, rows: int) -> torch.Tensor:
    return t.contiguous().view(torch.uint8).reshape(rows, -1)


def _tokens(s: Scale, phase: str) -> int:
    return s.prefill_tokens if phase == "prefill" else s.decode_batch


def _causal_bounds(t: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk is the last t of s positions: token i sees keys [0, s - t + i + 1)."""
    return torch.zeros(t, dtype=torch.int32), torch.arange(s - t + 1, s + 1, dtype=torch.int32)


def _routed_ids(g: Gen, t: int, local: int) -> torch.Tensor:
    """Top-8 of 256 per token, seen from rank 0 of an EP group: ids of experts on
    other ranks are -1, the rest are local ids in [0, local)."""
    ids = torch.rand(t, V.n_routed_experts, generator=g).argsort(dim=1)[:, :V.n_activated_experts]
    return torch.where(ids < local, ids, torch.full_like(ids, -1)).to(torch.int32)


def _sparse_indices(g: Gen, rows: int, visible: list[int], offsets: list[int]) -> torch.Tensor:
    """index_topk distinct keys per row among its visible ones (all of them when fewer)."""
    k = V.index_topk
    out = torch.full((rows, k), -1, dtype=torch.int32)
    for i in range(rows):
        n = min(k, visible[i])
        sel = torch.randperm(visible[i], generator=g)[:n] if visible[i] > k else torch.arange(n)
        out[i, :n] = (sel + offsets[i]).int()
    return out


# -- one maker per op ---------------------------------------------------------------------------
def act_quant(s: Scale, phase: str) -> Maker:
    return lambda g: {"x": _bf16(g, _tokens(s, phase), V.dim)}


def dequant(s: Scale, phase: str) -> Maker:
    t = _tokens(s, phase)
    return lambda g: {"y": _fp8(g, t, V.dim), "s": _pow2(g, t, V.dim // V.fp8_block)}


def weight_dequant(s: Scale, phase: str) -> Maker:
    n, k = V.q_lora_rank, V.dim  # wq_a
    return lambda g: {"w": _fp8(g, n, k), "s": torch.rand(cdiv(n, 128), cdiv(k, 128), generator=g) * 1e-3 + 1e-4}


def fp8_gemm(s: Scale, phase: str) -> Maker:
    m, n, k = _tokens(s, phase), V.q_lora_rank, V.dim  # wq_a: hidden -> q latent

    def make(g):
        return {"a": _fp8(g, m, k), "sa": _pow2(g, m, k // 128), "b": _fp8(g, n, k),
                "sb": torch.rand(cdiv(n, 128), k // 128, generator=g) * 1e-3 + 1e-4}
    return make


def rms_norm(s: Scale, phase: str) -> Maker:
    t = _tokens(s, phase)
    return lambda g: {"x": _bf16(g, t, V.dim), "w": _bf16(g, V.dim), "residual": _bf16(g, t, V.dim)}


def layer_norm(s: Scale, phase: str) -> Maker:
    t = _tokens(s, phase)
    return lambda g: {"x": _bf16(g, t, V.index_head_dim), "w": _bf16(g, V.index_head_dim), "b": _bf16(g, V.index_head_dim)}


def rope(s: Scale, phase: str) -> Maker:
    t = _tokens(s, phase)

    def make(g):
        i = torch.arange(V.qk_rope_head_dim // 2, dtype=torch.float32)
        return {"x": _bf16(g, t, V.n_heads, V.qk_rope_head_dim), "positions": torch.randint(0, s.context, (t,), generator=g),
                "freqs": V.rope_theta ** (-2 * i / V.qk_rope_head_dim), "interleaved": True}
    return make


def hadamard(s: Scale, phase: str) -> Maker:
    return lambda g: {"x": _bf16(g, _tokens(s, phase), V.index_n_heads, V.index_head_dim)}


def indexer_logits(s: Scale, phase: str) -> Maker:
    t, n, h, d = s.prefill_tokens, s.context, V.index_n_heads, V.index_head_dim

    def make(g):
        ks, ke = _causal_bounds(t, n)
        return {"q": _fp8(g, t, h, d), "k": _fp8(g, n, d), "weights": torch.randn(t, h, generator=g) * (h * d) ** -0.5,
                "ks": ks, "ke": ke, "k_scale": _pow2(g, n)}
    return make


def _index_cache(g: Gen, nb: int) -> torch.Tensor:
    k8, sc = _fp8(g, nb, PAGE * 128), _pow2(g, nb, PAGE)
    return torch.cat([_as_bytes(k8, nb), _as_bytes(sc, nb)], 1).reshape(nb, PAGE, 132)


def indexer_logits_paged(s: Scale, phase: str) -> Maker:
    b, mb, h = s.decode_batch, cdiv(s.context, PAGE), V.index_n_heads

    def make(g):
        return {"q": _fp8(g, b, h, V.index_head_dim), "k_cache": _index_cache(g, b * mb),
                "weights": torch.randn(b, h, generator=g) * (h * V.index_head_dim) ** -0.5,
                "block_table": torch.randperm(b * mb, generator=g).reshape(b, mb).int(),
                "seqlens": torch.full((b,), s.context, dtype=torch.int32)}
    return make


def index_cache_pack(s: Scale, phase: str) -> Maker:
    return lambda g: {"k": _bf16(g, cdiv(_tokens(s, phase), PAGE), PAGE, V.index_head_dim)}


def topk_select(s: Scale, phase: str) -> Maker:
    t, n = _tokens(s, phase), s.context

    def make(g):
        out: dict[str, Any] = {"logits": torch.randn(t, n, generator=g), "k": V.index_topk}
        if phase == "prefill":
            out["ks"], out["ke"] = _causal_bounds(t, n)
        return out
    return make


def sparse_mla_prefill(s: Scale, phase: str) -> Maker:
    t, n = s.prefill_tokens, s.context

    def make(g):
        idx = _sparse_indices(g, t, [n - t + i + 1 for i in range(t)], [0] * t)
        return {"q": _bf16(g, t, V.n_heads, V.d_qk), "kv": _bf16(g, n, 1, V.d_qk), "indices": idx.unsqueeze(1),
                "sm_scale": V.softmax_scale, "d_v": V.d_v}
    return make


def _mla_cache(g: Gen, n: int) -> torch.Tensor:
    lat = _as_bytes(_fp8(g, n, V.kv_lora_rank), n)
    sc = _as_bytes(_pow2(g, n, 4, lo=-10, hi=-4), n)
    pe = _as_bytes(_bf16(g, n, V.qk_rope_head_dim), n)
    return torch.cat([lat, sc, pe], 1)


def sparse_mla_decode(s: Scale, phase: str) -> Maker:
    b, mb = s.decode_batch, cdiv(s.context, PAGE)

    def make(g):
        # sequence i owns blocks [i*mb, (i+1)*mb): physical index = block * PAGE + offset
        idx = _sparse_indices(g, b, [s.context] * b, [i * mb * PAGE for i in range(b)])
        return {"q": _bf16(g, b, 1, V.n_heads, V.d_qk), "kv_cache": _mla_cache(g, b * mb * PAGE).reshape(b * mb, PAGE, 1, 656),
                "indices": idx.unsqueeze(1), "sm_scale": V.softmax_scale, "d_v": V.d_v, "fmt": "e4m3fn"}
    return make


def mla_prefill_dense(s: Scale, phase: str) -> Maker:
    t, n = min(s.prefill_tokens, s.dense_context), s.dense_context
    return lambda g: {"q": _bf16(g, t, V.n_heads, V.qk_head_dim), "k": _bf16(g, n, V.n_heads, V.qk_head_dim),
                      "v": _bf16(g, n, V.n_heads, V.v_head_dim), "sm_scale": V.softmax_scale}


def mla_decode_dense(s: Scale, phase: str) -> Maker:
    b, mb = s.decode_batch, cdiv(s.context, PAGE)
    return lambda g: {"q": _bf16(g, b, 1, V.n_heads, V.d_qk), "kv_cache": _bf16(g, b * mb, PAGE, 1, V.d_qk),
                      "block_table": torch.arange(b * mb, dtype=torch.int32).reshape(b, mb),
                      "cache_seqlens": torch.full((b,), s.context, dtype=torch.int32),
                      "sm_scale": V.softmax_scale, "d_v": V.d_v, "causal": True}


def mla_cache_pack(s: Scale, phase: str) -> Maker:
    return lambda g: {"kv": _bf16(g, _tokens(s, phase), V.d_qk)}


def moe_gate(s: Scale, phase: str) -> Maker:
    t = _tokens(s, phase)
    return lambda g: {"x": _bf16(g, t, V.dim), "weight": _bf16(g, V.n_routed_experts, V.dim, scale=V.dim ** -0.5),
                      "bias": torch.randn(V.n_routed_experts, generator=g) * 0.1, "n_group": V.n_expert_groups,
                      "topk_group": V.n_limited_groups, "topk": V.n_activated_experts, "route_scale": V.route_scale,
                      "score_func": "sigmoid"}


def moe_experts(s: Scale, phase: str) -> Maker:
    t, e, i, d = _tokens(s, phase), s.local_experts, s.moe_inter, V.dim

    def make(g):
        w = torch.rand(t, V.n_activated_experts, generator=g) + 0.1
        return {"x": _bf16(g, t, d), "ids": _routed_ids(g, t, e), "weights": w / w.sum(1, keepdim=True) * V.route_scale,
                "w1": _bf16(g, e, i, d, scale=d ** -0.5), "w3": _bf16(g, e, i, d, scale=d ** -0.5), "w2": _bf16(g, e, d, i, scale=i ** -0.5)}
    return make


def _local_counts(g: Gen, t: int, local: int) -> list[int]:
    ids = _routed_ids(g, t, local)
    return [int((ids == j).sum()) for j in range(local)]


def moe_grouped_gemm_contiguous(s: Scale, phase: str) -> Maker:
    t, e, n, k = s.prefill_tokens, s.local_experts, 2 * s.moe_inter, V.dim  # w1|w3 fused

    def make(g):
        counts = _local_counts(g, t, e)
        segs = []
        for j, c in enumerate(counts):
            segs += [torch.full((c,), j, dtype=torch.int32), torch.full((-c % 128,), -1, dtype=torch.int32)]
        m_idx = torch.cat(segs)
        return {"a": _bf16(g, m_idx.numel(), k), "b": _bf16(g, e, n, k, scale=k ** -0.5), "m_indices": m_idx}
    return make


def moe_grouped_gemm_masked(s: Scale, phase: str) -> Maker:
    t, e, n, k = s.decode_batch, s.local_experts, 2 * s.moe_inter, V.dim

    def make(g):
        counts = _local_counts(g, t, e)
        mm = max(1, max(counts))
        return {"a": _bf16(g, e, mm, k), "b": _bf16(g, e, n, k, scale=k ** -0.5), "masked_m": torch.tensor(counts, dtype=torch.int32)}
    return make


MAKERS: dict[str, tuple[Callable[[Scale, str], Maker], tuple[str, ...]]] = {
    "act_quant": (act_quant, PHASES), "dequant": (dequant, PHASES), "weight_dequant": (weight_dequant, ("prefill",)),
    "fp8_gemm": (fp8_gemm, PHASES), "rms_norm": (rms_norm, PHASES), "layer_norm": (layer_norm, PHASES),
    "rope": (rope, PHASES), "hadamard": (hadamard, PHASES),
    "indexer_logits": (indexer_logits, ("prefill",)), "indexer_logits_paged": (indexer_logits_paged, ("decode",)),
    "index_cache_pack": (index_cache_pack, PHASES), "topk_select": (topk_select, PHASES),
    "sparse_mla_prefill": (sparse_mla_prefill, ("prefill",)), "sparse_mla_decode": (sparse_mla_decode, ("decode",)),
    "mla_prefill_dense": (mla_prefill_dense, ("prefill",)), "mla_decode_dense": (mla_decode_dense, ("decode",)),
    "mla_cache_pack": (mla_cache_pack, PHASES),
    "moe_gate": (moe_gate, PHASES), "moe_experts": (moe_experts, PHASES),
    "moe_grouped_gemm_contiguous": (moe_grouped_gemm_contiguous, ("prefill",)),
    "moe_grouped_gemm_masked": (moe_grouped_gemm_masked, ("decode",)),
}
# Not profiled: one-off setup and debugging ops, off the per-token path.
NOT_PROFILED = {"yarn_freqs": "computed once at load", "index_cache_unpack": "debug/inspection inverse of a pack",
                "mla_cache_unpack": "debug/inspection inverse of a pack"}


@dataclass(frozen=True)
class ProfileCase:
    op: str
    phase: str
    case: Case           # the timed call
    check: Case          # the call the accuracy gate runs (== case when the reference is fast enough)
    scale: str
    check_scale: str

    @property
    def id(self) -> str:
        return self.case.id

    @property
    def checked_at_profiled_shape(self) -> bool:
        return self.check is self.case


def profile_cases(scale: Scale, ops: list[str] | None = None, phases: tuple[str, ...] = PHASES) -> list[ProfileCase]:
    """Every (op, phase) profile case at ``scale``, in op-spec order."""
    from ..spec import specs

    chk = check_scale(scale)
    out = []
    for op in specs():
        if op not in MAKERS or (ops and op not in ops):
            continue
        maker, op_phases = MAKERS[op]
        for ph in op_phases:
            if ph not in phases:
                continue
            case = Case(op, f"{ph}-{scale.name}", maker(scale, ph), tags=frozenset({"profile", ph}))
            same = replace(chk, name=scale.name) == scale
            check = case if same else Case(op, f"{ph}-{chk.name}", maker(chk, ph), tags=frozenset({"profile", "check", ph}))
            out.append(ProfileCase(op, ph, case, check, scale.name, chk.name))
    return out


def describe_shapes(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}{list(v.shape)}" for k, v in args.items() if isinstance(v, torch.Tensor) and v.dim() > 0)
