"""The launches built ahead of time: every kernel at DeepSeek-V3.2 shapes
(core.constants), with the tiles the runtime wrappers use."""
from __future__ import annotations

from . import attention, indexer, moe, norm, quant, rotary
from .aot import AotSpec
from ...core.constants import DEEPSEEK_V32 as C
from ...core.fp8 import format_for_arch

TOKENS = 128  # a prefill chunk; only divisibility of runtime ints matters to codegen


def _quant() -> list[AotSpec]:
    out = []
    for sf in ("ue8m0", "fp32"):
        out.append(AotSpec(f"act_quant_{sf}", quant.act_quant_kernel, ("act_quant",),
                           {"x_ptr": "*bf16", "y_ptr": "*fp8", "s_ptr": "*fp32", "R": TOKENS, "N": C.dim},
                           {"FMAX": lambda t: format_for_arch(t).max, "MIN_NORMAL": lambda t: quant.min_normal(format_for_arch(t)), "UE8M0": sf == "ue8m0", "BLOCK": C.fp8_block, "BR": 16,
                            "NAN_CODE": lambda t: quant.nan_code(format_for_arch(t))},
                           shape=f"x [{TOKENS}, {C.dim}] bf16"))
    # One build serves every projection: codegen sees only N, K % 16 == 0.
    for label, n, k in (("wq_b", C.n_heads * C.qk_head_dim, C.q_lora_rank),):
        out.append(AotSpec(f"fp8_gemm_{label}", quant.fp8_gemm_kernel, ("fp8_gemm",),
                           {"a_ptr": "*fp8", "sa_ptr": "*fp32", "b_ptr": "*fp8", "sb_ptr": "*fp32", "c_ptr": "*bf16",
                            "M": TOKENS, "N": n, "K": k},
                           {**quant.FP8_GEMM_TILE, "INTERP": False}, num_warps=4, num_stages=3, matrix=True, hot=True,
                           shape=f"M={TOKENS} N={n} K={k}"))
    return out


def _norm() -> list[AotSpec]:
    out = []
    for label, d, res in (("hidden_residual", C.dim, True), ("q_norm", C.q_lora_rank, False), ("kv_norm", C.kv_lora_rank, False)):
        out.append(AotSpec(f"rms_norm_{label}", norm.rms_norm_kernel, ("rms_norm",),
                           {"x_ptr": "*bf16", "w_ptr": "*fp32", "r_ptr": "*bf16", "y_ptr": "*bf16", "ro_ptr": "*bf16",
                            "D": d, "eps": C.rms_eps},
                           {"HAS_RES": res, "BD": 1 << (d - 1).bit_length()}, num_warps=norm.warps_for(d),
                           shape=f"x [{TOKENS}, {d}] bf16"))
    return out


def _rope() -> list[AotSpec]:
    half = C.qk_rope_head_dim // 2
    mla = AotSpec("rope_mla_interleaved", rotary.rope_kernel, ("rope",),
                  {"x_ptr": "*bf16", "pos_ptr": "*i64", "f_ptr": "*fp32", "y_ptr": "*bf16", "H": C.n_heads,
                   "sx_t": C.n_heads * C.qk_head_dim, "sx_h": C.qk_head_dim, "sx_d": 1},
                  {"HALF": half, "INTERLEAVED": True, "BH": 16, "BP": half},
                  shape=f"q_pe [T, {C.n_heads}, 64] of 192-dim heads")
    idx = AotSpec("rope_indexer_rotate_half", rotary.rope_kernel, ("rope",),
                  {"x_ptr": "*bf16", "pos_ptr": "*i64", "f_ptr": "*fp32", "y_ptr": "*bf16", "H": C.index_n_heads,
                   "sx_t": C.index_n_heads * C.index_head_dim, "sx_h": C.index_head_dim, "sx_d": 1},
                  {"HALF": half, "INTERLEAVED": False, "BH": 16, "BP": half},
                  shape=f"q[..., :64] [T, {C.index_n_heads}, 64] of 128-dim heads")
    return [mla, idx]


def _dsa() -> list[AotSpec]:
    ctx = 65536  # keys in a long-context prefill; only its divisibility matters
    out = [AotSpec("indexer_logits_fp8", indexer.indexer_logits_kernel, ("indexer_logits",),
                   {"q_ptr": "*fp8", "k_ptr": "*fp8", "w_ptr": "*fp32", "ks_ptr": "*i32", "ke_ptr": "*i32",
                    "kscale_ptr": "*fp32", "out_ptr": "*fp32", "S": ctx, "H": C.index_n_heads, "D": C.index_head_dim},
                   {"HAS_SCALE": True, "INTERP": False, "BH": C.index_n_heads, "BD": C.index_head_dim, "BN": 64},
                   num_warps=indexer.WARPS, num_stages=indexer.STAGES, matrix=True, hot=True,
                   shape=f"q [T, {C.index_n_heads}, {C.index_head_dim}] fp8, k [{ctx}, {C.index_head_dim}] fp8")]
    common = {"q_ptr": "*bf16", "idx_ptr": "*i32", "out_ptr": "*bf16", "lse_ptr": "*fp32", "mlog_ptr": "*fp32",
              "H": C.n_heads, "K": C.index_topk, "sm_scale": C.softmax_scale}
    tiles = {"DV": C.kv_lora_rank, "DR": C.qk_rope_head_dim, "BDV": C.kv_lora_rank, "BDR": C.qk_rope_head_dim,
             "BH": attention.TILE_H, "BK": lambda t: attention.tile_k(amd=t.startswith("gfx")), "INTERP": False, "FP8_DT": lambda t: attention.TL_FP8[format_for_arch(t).dtype]}
    out.append(AotSpec("sparse_mla_prefill_bf16", attention.sparse_mla_kernel, ("sparse_mla_prefill",),
                       {**common, "kv_ptr": "*bf16", "NROWS": ctx, "KV_STRIDE": C.d_qk}, {**tiles, "FP8_CACHE": False, "Q_AS_B": lambda t: attention.q_as_b(False, amd=t.startswith("gfx"))},
                       num_warps=attention.WARPS, num_stages=attention.STAGES, matrix=True, hot=True,
                       shape=f"q [T, {C.n_heads}, {C.d_qk}] bf16, kv [{ctx}, 1, {C.d_qk}] bf16, topk {C.index_topk}"))
    out.append(AotSpec("sparse_mla_decode_fp8cache", attention.sparse_mla_kernel, ("sparse_mla_decode",),
                       {**common, "kv_ptr": "*u8", "NROWS": ctx, "KV_STRIDE": attention.CACHE_BYTES},
                       {**tiles, "FP8_CACHE": True, "Q_AS_B": False}, num_warps=attention.WARPS, num_stages=attention.STAGES, matrix=True, hot=True,
                       shape=f"q [B, 1, {C.n_heads}, {C.d_qk}] bf16, 656-byte cache, topk {C.index_topk}"))
    return out


def _moe() -> list[AotSpec]:
    m = 8 * 128  # routed rows of a batch, 128-aligned segments
    args = {"a_ptr": "*bf16", "b_ptr": "*bf16", "b3_ptr": "*bf16", "ids_ptr": "*i32", "c_ptr": "*bf16"}
    return [
        AotSpec("moe_gate_up_swiglu", moe.grouped_gemm_kernel, ("moe_experts",),
                {**args, "N": C.moe_inter_dim, "K": C.dim}, {"SWIGLU": True, "INTERP": False, **moe.TILE},
                num_warps=4, num_stages=moe.STAGES[True], matrix=True, hot=True,
                shape=f"a [{m}, {C.dim}] x w1, w3 [E, {C.moe_inter_dim}, {C.dim}] bf16"),
        AotSpec("moe_down", moe.grouped_gemm_kernel, ("moe_grouped_gemm_contiguous", "moe_experts"),
                {**args, "c_ptr": "*fp32", "N": C.dim, "K": C.moe_inter_dim}, {"SWIGLU": False, "INTERP": False, **moe.TILE},
                num_warps=4, num_stages=moe.STAGES[False], matrix=True, hot=True,
                shape=f"h [{m}, {C.moe_inter_dim}] x w2 [E, {C.dim}, {C.moe_inter_dim}] bf16"),
    ]


def deepseek_specs() -> list[AotSpec]:
    return _quant() + _norm() + _rope() + _dsa() + _moe()
