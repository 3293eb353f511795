"""DeepSeek-V3.2 layers built only from dispatched ops.

Module and parameter names mirror the Hugging Face checkpoint
(``model.layers.N.self_attn.q_a_proj.weight`` ...), so loading is a name-for-
name copy. Every DeepSeek-specific computation (FP8 quantization and GEMM,
norms, RoPE, Hadamard, the indexer, top-k, sparse / dense MLA, MoE gate and
experts) goes through the resolved OpTable ``ops``; only plain float GEMMs,
embedding lookup and SiLU use torch directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .config import ModelConfig
from ..registry import OpTable
from ..spec import cdiv
from . import parallel as par_mod
from .parallel import Parallel

FP8_BLOCK = par_mod.FP8_BLOCK
WEIGHT_FMT = "e4m3fn"  # DeepSeek's released checkpoints store e4m3fn weights
PAGED_INDEX_DIM = 128  # the paged indexer key cache stores 128-dim keys (DeepGEMM's layout)
FP8_LATENT = (512, 64)  # kv_lora_rank, qk_rope_head_dim of the 656-byte FP8 latent cache (FlashMLA's layout)


def frozen_param(*shape: int, dtype: torch.dtype) -> nn.Parameter:
    """A zero inference-only parameter, filled by the checkpoint loader."""
    return nn.Parameter(torch.zeros(*shape, dtype=dtype), requires_grad=False)


class Linear(nn.Module):
    """y = x W^T. An FP8 weight (128x128 block scales in ``weight_scale_inv``)
    runs as act_quant + fp8_gemm through the table, as the release does.

    With ``parallel`` of tp > 1 and ``style`` 'column' this rank holds
    ``out_features / tp`` rows of W (its heads or columns); with 'row' it holds
    ``in_features / tp`` columns and all-reduces its partial y over the
    tensor-parallel group (DeepSeek's Column/RowParallelLinear)."""

    def __init__(self, ops: OpTable, cfg: ModelConfig, in_features: int, out_features: int, dtype: torch.dtype, fp8: bool,
                 parallel: Parallel | None = None, style: str | None = None):
        super().__init__()
        tp = parallel.layout.tp if parallel is not None and style is not None else 1
        if style == "column":
            out_features = par_mod.shard(out_features, tp, "out_features of a column-parallel weight", fp8)
        elif style == "row":
            in_features = par_mod.shard(in_features, tp, "in_features of a row-parallel weight", fp8)
        self.reduce = parallel.comm if style == "row" and tp > 1 else None
        self.ops, self.scale_fmt, self.out_features = ops, cfg.scale_fmt, out_features
        self.weight = frozen_param(out_features, in_features, dtype=torch.float8_e4m3fn if fp8 else dtype)
        self.weight_scale_inv = frozen_param(cdiv(out_features, FP8_BLOCK), cdiv(in_features, FP8_BLOCK), dtype=torch.float32) if fp8 else None

    def dense_weight(self) -> torch.Tensor:
        if self.weight_scale_inv is None:
            return self.weight
        return self.ops.weight_dequant(self.weight, self.weight_scale_inv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._local(x)
        return y if self.reduce is None else self.reduce.all_reduce(y, "tp")

    def _local(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_scale_inv is None:
            return x @ self.weight.to(x.dtype).T
        x2 = x.reshape(-1, x.shape[-1])
        xq, xs = self.ops.act_quant(x2, FP8_BLOCK, WEIGHT_FMT, self.scale_fmt)
        y = self.ops.fp8_gemm(xq, xs, self.weight, self.weight_scale_inv)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class RMSNorm(nn.Module):
    def __init__(self, ops: OpTable, dim: int, eps: float):
        super().__init__()
        self.ops, self.eps = ops, eps
        self.weight = frozen_param(dim, dtype=torch.float32)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return self.ops.rms_norm(x, self.weight, self.eps, residual)


class LayerNorm(nn.Module):
    def __init__(self, ops: OpTable, dim: int, eps: float):
        super().__init__()
        self.ops, self.eps = ops, eps
        self.weight = frozen_param(dim, dtype=torch.float32)
        self.bias = frozen_param(dim, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.layer_norm(x, self.weight, self.bias, self.eps)


@dataclass
class Batch:
    """Where the new tokens sit: their positions (flattened [B * S]) and their
    rows in a cache laid out as [B * capacity], computed once per forward."""

    start: int
    length: int
    batch: int
    capacity: int
    freqs: torch.Tensor
    positions: torch.Tensor = field(init=False)
    rows: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        dev = self.freqs.device
        self.positions = torch.arange(self.start, self.start + self.length, device=dev).repeat(self.batch)
        self.rows = torch.arange(self.batch, device=dev).repeat_interleave(self.length) * self.capacity + self.positions

    @property
    def end(self) -> int:
        return self.start + self.length


def write_rows(cache: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Write ``values`` into ``rows`` of ``cache`` seen as [rows, ...] and return the cache as that written view.

    The same memory either way; keeping the written view as the cache is what lets a graph tracer (the ONNX
    export's) see the write: it follows a write into a view to reads of that view, not to reads of the base."""
    flat = cache.view(-1, *cache.shape[2:]) if values.dim() > 1 else cache.view(-1)
    flat[rows] = values
    return flat.view(cache.shape)


class Indexer(nn.Module):
    """The lightning indexer: a score for every cached token, the top-k kept.

    Its precision follows the checkpoint (``cfg.index_fp8``). A quantized
    release scores in FP8 as DeepSeek's kernels do: Hadamard-rotated q and k,
    one scale per head of ``index_head_dim`` values (the FP8 group is the head),
    an FP8 key cache. An unquantized checkpoint scores in the model's float
    dtype with no FP8 round trip, as its authors (Hugging Face transformers)
    do; the Hadamard is skipped there too: it is orthogonal (q.k is unchanged)
    and exists only to spread outliers before quantization.

    FP8 keys of 128 dims with ue8m0 scales live in the paged cache that
    DeepGEMM's ``fp8_paged_mqa_logits`` reads (``index_cache_pack``: per block
    BS x 128 bytes, then BS fp32 scales), and decode scores them there
    (``indexer_logits_paged``); prefill reads them back with
    ``index_cache_unpack``. Other FP8 shapes keep a contiguous key cache.
    """

    BLOCK_SIZE = 64

    def __init__(self, ops: OpTable, cfg: ModelConfig, dtype: torch.dtype):
        super().__init__()
        self.ops, self.cfg, self.dtype = ops, cfg, dtype
        fp8 = cfg.fp8_weights
        self.wq_b = Linear(ops, cfg, cfg.q_lora_rank, cfg.index_n_heads * cfg.index_head_dim, dtype, fp8)
        self.wk = Linear(ops, cfg, cfg.dim, cfg.index_head_dim, dtype, fp8)
        self.k_norm = LayerNorm(ops, cfg.index_head_dim, 1e-6)
        self.weights_proj = Linear(ops, cfg, cfg.dim, cfg.index_n_heads, dtype, fp8=False)
        self.paged = cfg.index_paged and cfg.index_fp8 and cfg.index_head_dim == PAGED_INDEX_DIM and cfg.scale_fmt == "ue8m0"
        self.k_cache: torch.Tensor | None = None
        self.k_scale: torch.Tensor | None = None

    def allocate(self, batch: int, capacity: int, device: torch.device) -> None:
        d = self.cfg.index_head_dim
        self.k_scale = None
        if self.paged:
            self.k_cache = torch.zeros(batch * capacity // self.BLOCK_SIZE, self.BLOCK_SIZE, d + 4, dtype=torch.uint8, device=device)
        elif self.cfg.index_fp8:
            self.k_cache = torch.zeros(batch, capacity, d, dtype=torch.float8_e4m3fn, device=device)
            self.k_scale = torch.zeros(batch, capacity, dtype=torch.float32, device=device)
        else:
            self.k_cache = torch.zeros(batch, capacity, d, dtype=self.dtype, device=device)

    def _rope_first(self, x: torch.Tensor, b: Batch) -> torch.Tensor:
        # The indexer rotates the FIRST qk_rope_head_dim dims, rotate-half (non-interleaved) pairing.
        r = self.cfg.qk_rope_head_dim
        return torch.cat([self.ops.rope(x[..., :r], b.positions, b.freqs, False), x[..., r:]], dim=-1)

    def _page_views(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The paged cache's key bytes [NB, BS, 128] and scale bytes [NB, BS, 4], as views."""
        nb, bs = self.k_cache.shape[:2]
        flat = self.k_cache.view(nb, -1)
        return flat[:, : bs * PAGED_INDEX_DIM].view(nb, bs, PAGED_INDEX_DIM), flat[:, bs * PAGED_INDEX_DIM:].view(nb, bs, 4)

    def forward(self, x: torch.Tensor, qr: torch.Tensor, b: Batch) -> torch.Tensor:
        """x [T, dim], qr [T, q_lora] -> global cache rows of the selected keys [T, topk] (-1 padded)."""
        cfg, ops = self.cfg, self.ops
        h, d = cfg.index_n_heads, cfg.index_head_dim
        q = self._rope_first(self.wq_b(qr).view(-1, h, d), b)
        k = self._rope_first(self.k_norm(self.wk(x)).view(-1, 1, d), b)[:, 0]
        # all constant factors folded into the per-head weights, as the FP8 kernels expect
        w = self.weights_proj(x).float() * h ** -0.5 * d ** -0.5
        if cfg.index_fp8:
            q, k = ops.hadamard(q), ops.hadamard(k)
            q, qs = ops.act_quant(q, d, WEIGHT_FMT, cfg.scale_fmt)
            w = w * qs[..., 0]
            if self.paged:
                packed = ops.index_cache_pack(k.view(-1, 1, d), WEIGHT_FMT)  # one token per block: 128 key bytes, 4 scale bytes
                keys, scales = self._page_views()
                blk, off = b.rows // self.BLOCK_SIZE, b.rows % self.BLOCK_SIZE
                keys[blk, off] = packed[:, 0, :d]
                scales[blk, off] = packed[:, 0, d:]
            else:
                k8, ks = ops.act_quant(k, d, WEIGHT_FMT, cfg.scale_fmt)
                self.k_cache = write_rows(self.k_cache, b.rows, k8)
                self.k_scale = write_rows(self.k_scale, b.rows, ks[:, 0])
        else:
            self.k_cache = write_rows(self.k_cache, b.rows, k.to(self.k_cache.dtype))
        per_seq = b.capacity // self.BLOCK_SIZE
        if self.paged and b.length == 1:  # decode: every sequence at once, straight from the paged cache
            table = torch.arange(b.batch * per_seq, device=x.device, dtype=torch.int32).view(b.batch, per_seq)
            seqlens = torch.full((b.batch,), b.end, dtype=torch.int32, device=x.device)
            logits = ops.indexer_logits_paged(q, self.k_cache, w, table, seqlens)
            idx = ops.topk_select(logits, cfg.index_topk, torch.zeros_like(seqlens), seqlens)
            base = torch.arange(b.batch, device=x.device, dtype=idx.dtype)[:, None] * b.capacity
            return torch.where(idx >= 0, idx + base, idx)
        picks = []
        for i in range(b.batch):  # per sequence: contexts differ; tokens and heads are vectorized
            rows = slice(i * b.length, (i + 1) * b.length)
            ke = (b.positions[rows] + 1).int()
            if self.paged:
                used = -(-b.end // self.BLOCK_SIZE)
                k8, ks = ops.index_cache_unpack(self.k_cache[i * per_seq: i * per_seq + used], WEIGHT_FMT)
                keys, scale = k8.reshape(-1, d)[: b.end], ks.reshape(-1)[: b.end]
            elif cfg.index_fp8:
                keys, scale = self.k_cache[i, : b.end], self.k_scale[i, : b.end]
            else:
                keys, scale = self.k_cache[i, : b.end], None
            logits = ops.indexer_logits(q[rows], keys, w[rows], torch.zeros_like(ke), ke, scale)
            idx = ops.topk_select(logits, cfg.index_topk, torch.zeros_like(ke), ke)
            picks.append(torch.where(idx >= 0, idx + i * b.capacity, idx))
        return torch.cat(picks)


class MLA(nn.Module):
    """Multi-head latent attention in the absorbed form: one shared latent KV
    head [kv | k_pe] of kv_lora_rank + qk_rope_head_dim, per-head up/down
    projections folded into q and the output.

    Tensor-parallel: each rank holds ``n_heads / tp`` heads (``self.cfg`` is
    that rank's view, with its own head count); the latent projections, the
    norms and the indexer are replicated, o_proj all-reduces."""

    def __init__(self, ops: OpTable, cfg: ModelConfig, dtype: torch.dtype, parallel: Parallel | None = None):
        super().__init__()
        tp = parallel.layout.tp if parallel is not None else 1
        self.ops, self.cfg = ops, replace(cfg, n_heads=par_mod.shard(cfg.n_heads, tp, "n_heads", False))
        fp8, h, p = cfg.fp8_weights, cfg.n_heads, parallel
        self.q_a_proj = Linear(ops, cfg, cfg.dim, cfg.q_lora_rank, dtype, fp8)
        self.q_a_layernorm = RMSNorm(ops, cfg.q_lora_rank, cfg.rms_eps)
        self.q_b_proj = Linear(ops, cfg, cfg.q_lora_rank, h * cfg.qk_head_dim, dtype, fp8, p, "column")
        self.kv_a_proj_with_mqa = Linear(ops, cfg, cfg.dim, cfg.kv_lora_rank + cfg.qk_rope_head_dim, dtype, fp8)
        self.kv_a_layernorm = RMSNorm(ops, cfg.kv_lora_rank, cfg.rms_eps)
        self.kv_b_proj = Linear(ops, cfg, cfg.kv_lora_rank, h * (cfg.qk_nope_head_dim + cfg.v_head_dim), dtype, fp8, p, "column")
        self.o_proj = Linear(ops, cfg, h * cfg.v_head_dim, cfg.dim, dtype, fp8, p, "row")
        self.indexer = Indexer(ops, cfg, dtype) if cfg.sparse else None
        # paged [B * capacity / BS, BS, 1, W]: W = kv_lora + rope floats, or 656 bytes with the FP8 latent cache
        self.kv_cache: torch.Tensor | None = None
        if cfg.kv_cache_fp8 and (cfg.kv_lora_rank, cfg.qk_rope_head_dim) != FP8_LATENT:
            raise ConfigError(f"kv_cache='fp8': the 656-byte FP8 latent cache holds kv_lora_rank {FP8_LATENT[0]} + qk_rope_head_dim "
                              f"{FP8_LATENT[1]}, this model has {cfg.kv_lora_rank} + {cfg.qk_rope_head_dim}; use kv_cache='float'")

    BLOCK_SIZE = 64
    FP8_ROW = 656

    def allocate(self, batch: int, capacity: int, device: torch.device, dtype: torch.dtype) -> None:
        width = self.cfg.kv_lora_rank + self.cfg.qk_rope_head_dim
        shape = (batch * capacity // self.BLOCK_SIZE, self.BLOCK_SIZE, 1)
        if self.cfg.kv_cache_fp8:
            self.kv_cache = torch.zeros(*shape, self.FP8_ROW, dtype=torch.uint8, device=device)
        else:
            self.kv_cache = torch.zeros(*shape, width, dtype=dtype, device=device)
        if self.indexer is not None:
            self.indexer.allocate(batch, capacity, device)

    def wkv_b(self) -> torch.Tensor:
        """kv_b_proj as [H, nope + v, kv_lora]. An FP8 weight is dequantized here, once per forward
        of this layer, and dropped after it: transient, never kept on the module (DeepSeek's absorbed
        path does the same), so the model holds kv_b_proj only in FP8."""
        return self.kv_b_proj.dense_weight().view(self.cfg.n_heads, -1, self.cfg.kv_lora_rank)

    def forward(self, x: torch.Tensor, b: Batch) -> torch.Tensor:
        cfg, ops, h = self.cfg, self.ops, self.cfg.n_heads
        x = x.reshape(-1, cfg.dim)
        qr = self.q_a_layernorm(self.q_a_proj(x))
        q = self.q_b_proj(qr).view(-1, h, cfg.qk_head_dim)
        q_nope, q_pe = q.split([cfg.qk_nope_head_dim, cfg.qk_rope_head_dim], dim=-1)
        q_pe = ops.rope(q_pe, b.positions, b.freqs, True)  # MLA: last 64 dims, interleaved pairs
        kv, k_pe = self.kv_a_proj_with_mqa(x).split([cfg.kv_lora_rank, cfg.qk_rope_head_dim], dim=-1)
        kv = self.kv_a_layernorm(kv)
        k_pe = ops.rope(k_pe.unsqueeze(1), b.positions, b.freqs, True)[:, 0]
        latent = torch.cat([kv, k_pe], dim=-1)
        # one view of the cache rows, written and then read through (a graph tracer, as the ONNX export's,
        # follows a write into a view only to reads of that same view, not to later reads of the base tensor)
        flat = self.kv_cache.view(-1, self.kv_cache.shape[-1])
        if cfg.kv_cache_fp8:  # FP8 latent (four 128-tiles with ue8m0 scales) + bf16 rope, 656 bytes a token
            flat[b.rows] = ops.mla_cache_pack(latent, WEIGHT_FMT)
        else:
            flat[b.rows] = latent.to(self.kv_cache.dtype)
        self.kv_cache = flat.view(self.kv_cache.shape)  # the written view is the cache: decode reads it back through it

        wkv_b = self.wkv_b().to(x.dtype)
        q_abs = torch.einsum("thd,hdc->thc", q_nope, wkv_b[:, : cfg.qk_nope_head_dim])
        q_full = torch.cat([q_abs, q_pe], dim=-1).to(x.dtype if cfg.kv_cache_fp8 else self.kv_cache.dtype)
        scale, d_v = cfg.softmax_scale, cfg.kv_lora_rank
        if self.indexer is not None:
            rows = self.indexer(x, qr, b)
            if b.length == 1:  # decode: the paged cache, indices = block * BS + offset
                o, _ = ops.sparse_mla_decode(q_full.view(b.batch, 1, h, -1), self.kv_cache, rows.view(b.batch, 1, -1).int(), scale, d_v,
                                             WEIGHT_FMT)
            else:  # prefill reads the cache as decode will see it (dequantized, with the FP8 cache)
                o, _, _ = ops.sparse_mla_prefill(q_full, self._float_rows(flat, x.dtype), rows.unsqueeze(1).int(), scale, d_v)
        else:  # V3 / V3.1: dense absorbed attention over the paged cache, causal within the new tokens
            per_seq = b.capacity // self.BLOCK_SIZE
            table = torch.arange(b.batch * per_seq, device=x.device, dtype=torch.int32).view(b.batch, per_seq)
            seqlens = torch.full((b.batch,), b.end, dtype=torch.int32, device=x.device)
            cache = self._float_rows(flat, x.dtype).view(*self.kv_cache.shape[:3], -1) if cfg.kv_cache_fp8 else self.kv_cache
            o, _ = ops.mla_decode_dense(q_full.view(b.batch, b.length, h, -1), cache, table, seqlens, scale, d_v, True)
        o = o.reshape(-1, h, d_v).to(x.dtype)
        o = torch.einsum("thc,hdc->thd", o, wkv_b[:, cfg.qk_nope_head_dim:])
        return self.o_proj(o.reshape(-1, h * cfg.v_head_dim))

    def _float_rows(self, flat: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Every cache row of ``flat`` (the cache as [rows, W]) as [rows, 1, kv_lora + rope] floats (the FP8 cache dequantized)."""
        if not self.cfg.kv_cache_fp8:
            return flat.unsqueeze(1)
        return self.ops.mla_cache_unpack(flat, WEIGHT_FMT).to(dtype).unsqueeze(1)


class MLP(nn.Module):
    """SwiGLU feed-forward: the dense layers and the shared expert."""

    def __init__(self, ops: OpTable, cfg: ModelConfig, inter: int, dtype: torch.dtype, parallel: Parallel | None = None):
        super().__init__()
        fp8, p = cfg.fp8_weights, parallel  # tensor-parallel: gate/up by columns, down by rows (all-reduced)
        self.gate_proj = Linear(ops, cfg, cfg.dim, inter, dtype, fp8, p, "column")
        self.up_proj = Linear(ops, cfg, cfg.dim, inter, dtype, fp8, p, "column")
        self.down_proj = Linear(ops, cfg, inter, cfg.dim, dtype, fp8, p, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj((F.silu(self.gate_proj(x).float()) * self.up_proj(x).float()).to(x.dtype))


class Gate(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.weight = frozen_param(cfg.n_routed_experts, cfg.dim, dtype=torch.float32)
        self.e_score_correction_bias = frozen_param(cfg.n_routed_experts, dtype=torch.float32)


class MoE(nn.Module):
    """Routed experts (gate + grouped SwiGLU) plus the always-on shared expert.

    Expert-parallel: ``experts`` holds this rank's ``n_routed_experts / ep``
    (``experts.j`` is global expert ``ep_rank * E / ep + j``); the shared
    expert is tensor-parallel like a dense MLP."""

    def __init__(self, ops: OpTable, cfg: ModelConfig, dtype: torch.dtype, parallel: Parallel | None = None):
        super().__init__()
        self.ops, self.cfg, self.parallel = ops, cfg, parallel
        self.gate = Gate(cfg)
        n_local = cfg.n_routed_experts // (parallel.layout.ep if parallel is not None else 1)
        self.experts = nn.ModuleList(MLP(ops, cfg, cfg.moe_inter_dim, dtype) for _ in range(n_local))
        self.shared_experts = MLP(ops, cfg, cfg.n_shared_experts * cfg.moe_inter_dim, dtype, parallel)
        self._stacked: tuple[torch.Tensor, ...] | None = None

    PROJ = ("gate_proj", "up_proj", "down_proj")

    def stacked(self) -> tuple[torch.Tensor, ...]:
        """The routed experts' weights stacked as [E, I, D] / [E, D, I]: (w1, w3, w2), or with an
        FP8 checkpoint (w1, s1, w3, s3, w2, s2), FP8 with their 128x128 block scales.

        The stacks are the experts' own storage, not a copy: once built, every expert's
        parameters are views into them, so the model holds each weight once, in its checkpoint
        dtype (nothing dequantized). They are rebuilt when the parameters were replaced
        (``model.to(device)`` moves each parameter on its own)."""
        if self._stacked is None or not self._shares_storage():
            attrs = ("weight", "weight_scale_inv") if self.cfg.fp8_weights else ("weight",)
            with torch.inference_mode(False), torch.no_grad():  # parameters must not become inference tensors
                self._stacked = tuple(self._stack(p, a) for p in self.PROJ for a in attrs)
        return self._stacked

    def _stack(self, proj: str, attr: str) -> torch.Tensor:
        params = [getattr(getattr(e, proj), attr) for e in self.experts]
        stack = torch.stack([p.detach() for p in params])
        for p, view in zip(params, stack):
            p.data = view
        return stack

    def _shares_storage(self) -> bool:
        attrs = ("weight", "weight_scale_inv") if self.cfg.fp8_weights else ("weight",)
        names = [(p, a) for p in self.PROJ for a in attrs]
        return all(getattr(getattr(self.experts[i], p), a).data_ptr() == st[i].data_ptr()
                   for (p, a), st in zip(names, self._stacked) for i in (0, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        x2 = x.reshape(-1, cfg.dim)
        weights, ids = self.ops.moe_gate(x2, self.gate.weight.to(x.dtype), self.gate.e_score_correction_bias, cfg.n_expert_groups,
                                         cfg.n_limited_groups, cfg.n_activated_experts, float(cfg.route_scale), cfg.score_func)
        if self.parallel is None or self.parallel.trivial:
            return (self.routed(x2, ids, weights) + self.shared_experts(x2)).view_as(x)
        y = par_mod.routed(self.ops, self.parallel, self.routed, x2, ids, weights, len(self.experts))
        return (y + self.shared_experts(x2)).view_as(x)

    def routed(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_j weights[t, j] * expert_{ids[t, j]}(x[t]) over the routed experts; ids -1 add nothing.

        FP8 weights stay FP8: ``moe="experts"`` runs each expert some token chose through its own
        Linear layers (act_quant + fp8_gemm), ``moe="grouped"`` the grouped FP8 GEMMs. Experts no
        token chose are never read (their weights may hold anything, SPEC §10). A traced graph
        (``dsport export-onnx``) cannot branch on the routing: there every expert runs on every
        token, FP8 as well, weighted 0 where it was not chosen (:meth:`_every_expert`)."""
        if self.cfg.fp8_weights and torch.jit.is_tracing():
            return self._every_expert(x, ids, weights)
        if self.cfg.fp8_weights:
            return self._grouped(x, ids, weights) if self.cfg.moe_grouped_gemm else self._chosen_experts(x, ids, weights)
        w1, w3, w2 = (w.to(x.dtype) for w in self.stacked())  # a transient cast only if x is not in the weights' dtype
        if self.cfg.moe_grouped_gemm:
            return self._grouped(x, ids, weights, (w1, w3, w2))
        return self.ops.moe_experts(x, ids, weights, w1, w3, w2).to(x.dtype)

    def _chosen_experts(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """One pass per expert that has tokens, through its FP8 Linear layers; top-k sums in fp32."""
        k = ids.shape[1]
        flat = ids.reshape(-1).long()
        slots = torch.nonzero(flat >= 0).squeeze(1)
        slots = slots[torch.argsort(flat[slots], stable=True)]
        experts, counts = torch.unique_consecutive(flat[slots], return_counts=True)
        y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        w = weights.reshape(-1)
        for e, s in zip(experts.tolist(), torch.split(slots, counts.tolist())):
            tok = s // k
            y.index_add_(0, tok, self.experts[e](x[tok]).float() * w[s].float()[:, None])
        return y.to(x.dtype)

    def _every_expert(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Every expert on every token times its routing weight (0 where not chosen): the
        route-independent form of :meth:`_chosen_experts`, row for row the same arithmetic."""
        valid = ids >= 0
        gate = torch.zeros(x.shape[0], len(self.experts), dtype=torch.float32, device=x.device)
        gate.scatter_add_(1, torch.where(valid, ids, 0).long(), torch.where(valid, weights.float(), 0.0))
        y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for e, expert in enumerate(self.experts):
            y = y + expert(x).float() * gate[:, e:e + 1]
        return y.to(x.dtype)

    ALIGN = 128

    def _grouped(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                 dense: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The routed experts as three grouped GEMMs: FP8 (the stacks of :meth:`stacked` as they
        are, activations through act_quant) or, with ``dense`` (w1, w3, w2), float.

        Rows go into DeepGEMM's contiguous layout, (token, expert) pairs sorted by expert, each
        expert's rows padded to a 128-row tile (padding rows carry group -1 and come out 0), or,
        for FP8 when it is smaller (decode: a few tokens per expert), into the masked layout
        [E, max rows per expert, D] with a row count per expert."""
        t, k = ids.shape
        e = self.cfg.n_routed_experts
        flat = ids.reshape(-1).long()
        valid = flat >= 0
        pair = torch.arange(t * k, device=x.device)[valid]
        expert = flat[valid]
        order = torch.argsort(expert, stable=True)
        pair, expert = pair[order], expert[order]
        counts = torch.bincount(expert, minlength=e)
        rank = torch.arange(expert.numel(), device=x.device) - (torch.cumsum(counts, 0) - counts)[expert]  # place within its expert
        padded = (counts + self.ALIGN - 1) // self.ALIGN * self.ALIGN
        m_max = int(counts.max()) if expert.numel() else 0
        masked = dense is None and e * m_max < int(padded.sum())
        if masked:
            dest, m = expert * m_max + rank, e * m_max
        else:
            dest, m = (torch.cumsum(padded, 0) - padded)[expert] + rank, int(padded.sum())
        a = x.new_zeros(m, x.shape[1])
        a[dest] = x[pair // k]
        m_indices = torch.full((m,), -1, dtype=torch.int32, device=x.device)
        m_indices[dest] = expert.int()
        if dense is not None:
            (w1, w3, w2), (s1, s3, s2) = dense, (None, None, None)
            gemm = lambda v, w, s: self.ops.moe_grouped_gemm_contiguous(v, w, m_indices)  # noqa: E731
        else:
            w1, s1, w3, s3, w2, s2 = self.stacked()
            gemm = self._fp8_gemm(m_indices, counts.int() if masked else None, m_max)
        h = (F.silu(gemm(a, w1, s1).float()) * gemm(a, w3, s3).float()).to(x.dtype)  # silu * mul in fp32, as moe_experts
        rows = gemm(h, w2, s2)[dest].float() * weights.reshape(-1)[pair].float()[:, None]
        return torch.zeros(t, x.shape[1], dtype=torch.float32, device=x.device).index_add_(0, pair // k, rows).to(x.dtype)

    def _fp8_gemm(self, m_indices: torch.Tensor, masked_m: torch.Tensor | None, m_max: int):
        """gemm(v [M, K] float, w, s): v times the stacked FP8 weight w (block scales s) per row's
        expert: act_quant, then the contiguous grouped FP8 GEMM, or the masked one when
        ``masked_m`` is given (rows then laid out as [E, m_max])."""
        ops, e = self.ops, self.cfg.n_routed_experts

        def gemm(v: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            vq, vs = ops.act_quant(v, FP8_BLOCK, WEIGHT_FMT, self.cfg.scale_fmt)
            if masked_m is None:
                return ops.moe_grouped_fp8_gemm_contiguous(vq, vs, w, s, m_indices)
            return ops.moe_grouped_fp8_gemm_masked(vq.view(e, m_max, -1), vs.view(e, m_max, -1), w, s, masked_m).view(e * m_max, -1)
        return gemm


class Block(nn.Module):
    def __init__(self, ops: OpTable, cfg: ModelConfig, layer_id: int, dtype: torch.dtype, parallel: Parallel | None = None):
        super().__init__()
        self.input_layernorm = RMSNorm(ops, cfg.dim, cfg.rms_eps)
        self.self_attn = MLA(ops, cfg, dtype, parallel)
        self.post_attention_layernorm = RMSNorm(ops, cfg.dim, cfg.rms_eps)
        dense = layer_id < cfg.n_dense_layers
        self.mlp = MLP(ops, cfg, cfg.inter_dim, dtype, parallel) if dense else MoE(ops, cfg, dtype, parallel)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, b: Batch):
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, b)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual
