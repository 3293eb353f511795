"""The routed experts with FP8 block-scaled weights (DeepSeek-V3.2's checkpoint format) over aiter's
``fused_moe`` in its w8a8 blockscale mode, and its contract model.

What aiter documents (ROCm/aiter ``aiter/fused_moe.py`` ``fused_moe``; its test references
``torch_moe_blockscale`` and the two-stage ``torch_moe_stage1`` / ``torch_moe_stage2`` of
``op_tests/test_moe_2stage.py``, where ``QuantType.per_1x128`` re-quantizes stage 1's output per 1x128):

* ``quant_type=QuantType.per_1x128``: w1 ``[E, 2I, D]`` (gate then up) and w2 ``[E, D, I]`` in
  ``aiter.dtypes.fp8`` — e4m3fnuz on gfx942, e4m3fn on gfx950 — with fp32 block scales
  ``w1_scale [E, 2I/128, D/128]`` and ``w2_scale [E, D/128, I/128]`` (one per 128x128 block).
* The activations are bf16 and quantized inside, per token and 128-channel group, dynamically
  (``pertoken_quant``: s = amax / dtype max, fp32) — once before stage 1 and again for stage 2's
  input ``silu(gate) * up`` — in the same fp8 flavour as the weights.
* ``expert_mask`` maps global ids to local experts as in the unquantized mode; the routed
  weight multiplies each slot's row (so a remote slot's NaN weight must be zeroed, as in
  :mod:`.aiter`).

The mapping: DeepSeek's weights are e4m3fn with ``weight_scale_inv`` per 128x128 block; on
gfx942 their bytes are relabelled exactly (:func:`.aiter.to_arch`: scale x2, 0x80 -> 0x00), w1
and w3 are stacked gate-first along with their scales (I must be a multiple of 128 so that no
scale block straddles the two). The spec's ``moe_experts`` takes float weights, so this is an
adapter with its own entry point (:func:`make_fp8_ops`), checked in tests/test_hip_backend.py
against dsport's reference composition — act_quant(128, arch format, fp32 scales), fp8_gemm,
silu * mul — (status ``contract``).
"""
from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import torch

from .aiter import ContractModel, as_arch_bytes, to_arch
from ...core.capabilities import Capability
from ...core.fp8 import E4M3FN, E4M3FNUZ, FP32, Fp8Format, format_for_arch, quantize_groups

BLOCK = 128

CAPABILITY = Capability(
    dtypes=(torch.bfloat16,), fp8_formats=(E4M3FN.name, E4M3FNUZ.name), archs=("gfx950", "gfx942"),
    note="aiter fused_moe(quant_type=per_1x128): fp8 weights with 128x128 fp32 block scales, bf16 activations "
         "quantized per 1x128 inside; D and I multiples of 128")


class QuantType(enum.Enum):
    """The members of ``aiter.QuantType`` the adapter uses (aiter/ops/enum.py)."""

    No = 0
    per_1x128 = 4


def _block_scales(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """[E, N/128, K/128] block scales expanded over w [E, N, K]."""
    n, k = w.shape[1:]
    return s.float().repeat_interleave(BLOCK, 1)[:, :n].repeat_interleave(BLOCK, 2)[:, :, :k]


class Fp8MoeContractModel(ContractModel):
    """The aiter contract models with fused_moe's per_1x128 mode."""

    QuantType = QuantType

    def fused_moe(self, hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk_weight: torch.Tensor,
                  topk_ids: torch.Tensor, expert_mask: torch.Tensor | None = None, activation: Any = "silu",
                  quant_type: Any = None, w1_scale: torch.Tensor | None = None, w2_scale: torch.Tensor | None = None,
                  **rest: Any) -> torch.Tensor:
        """per_1x128: torch_moe_stage1/2 of op_tests/test_moe_2stage.py (a1 and a2 quantized per token per 128
        by pertoken_quant in aiter.dtypes.fp8, weights dequantized per 128x128 block), fp32 arithmetic."""
        if quant_type in (None, QuantType.No):
            return super().fused_moe(hidden_states, w1, w2, topk_weight, topk_ids, expert_mask, activation, quant_type)
        if quant_type is not QuantType.per_1x128 or activation != "silu":
            raise NotImplementedError("contract model covers quant_type per_1x128 with activation Silu")
        assert w1.dtype == self.fp8.dtype and w2.dtype == self.fp8.dtype, f"weights must be aiter.dtypes.fp8 ({self.fp8})"
        assert w1_scale is not None and w2_scale is not None and w1_scale.dtype == torch.float32, "fp32 block scales"
        assert hidden_states.dtype == torch.bfloat16, "bf16 activations"
        e, two_i, d = w1.shape
        assert w1_scale.shape == (e, two_i // BLOCK, d // BLOCK) and w2_scale.shape == (e, d // BLOCK, two_i // 2 // BLOCK)
        ids = topk_ids.long()
        if expert_mask is not None:
            local = expert_mask.long().cumsum(0) - 1
            local[expert_mask == 0] = -1
            ids = local[ids]
        w1d = as_arch_bytes(w1, self.fp8).float() * _block_scales(w1, w1_scale)
        w2d = as_arch_bytes(w2, self.fp8).float() * _block_scales(w2, w2_scale)
        aq, asc = quantize_groups(hidden_states.float(), BLOCK, self.fp8, FP32)
        a1 = (aq.float().unflatten(-1, (-1, BLOCK)) * asc.unsqueeze(-1)).flatten(-2)
        t, k = ids.shape
        out = torch.zeros(t, k, d, dtype=torch.float32)
        inter = two_i // 2
        for x in range(e):
            m = ids == x
            if m.any():
                gate, up = (a1.unsqueeze(1).expand(t, k, -1)[m] @ w1d[x].T).split([inter, inter], -1)
                h = torch.nn.functional.silu(gate) * up
                hq, hs = quantize_groups(h, BLOCK, self.fp8, FP32)
                out[m] = (hq.float().unflatten(-1, (-1, BLOCK)) * hs.unsqueeze(-1)).flatten(-2) @ w2d[x].T
        return (out * topk_weight.float().view(t, k, 1)).sum(1).to(hidden_states.dtype)


def make_fp8_ops(vendor: Any, target: str,
                 to_arch: Callable[[torch.Tensor, Fp8Format], tuple[torch.Tensor, float]] = to_arch
                 ) -> dict[str, Callable[..., Any]]:
    """``moe_experts_fp8(x, ids, weights, w1, s1, w3, s3, w2, s2)`` over ``vendor.fused_moe``: w1/w3 [E, I, D]
    and w2 [E, D, I] FP8 with fp32 block scales [E, I/128, D/128] / [E, D/128, I/128]."""
    fp8 = format_for_arch(target)

    def moe_experts_fp8(x, ids, weights, w1, s1, w3, s3, w2, s2):
        e, inter, d = w1.shape
        if inter % BLOCK or d % BLOCK or x.dtype != torch.bfloat16:
            raise NotImplementedError(f"moe_experts_fp8 (aiter fused_moe per_1x128): takes bf16 x, D and I multiples of "
                                      f"{BLOCK}; got {x.dtype}, D={d}, I={inter}")
        w13, f13 = to_arch(torch.cat([w1, w3], dim=1), fp8)  # gate first (GateMode.SEPARATED)
        w2a, f2 = to_arch(w2, fp8)
        s13 = (torch.cat([s1, s3], dim=1).float() * f13).contiguous()
        remote = ids < 0  # as in the unquantized adapter: a global id expert_mask marks remote, its weight zeroed
        gids = torch.where(remote, torch.full_like(ids, e), ids).int().contiguous()
        mask = torch.cat([torch.ones(e, dtype=torch.int32, device=x.device), torch.zeros(1, dtype=torch.int32, device=x.device)])
        w = torch.where(remote, torch.zeros((), dtype=torch.float32, device=x.device), weights.float()).contiguous()
        if x.shape[0] == 0:
            return torch.empty(0, d, dtype=x.dtype, device=x.device)
        return vendor.fused_moe(x.contiguous(), w13.contiguous(), w2a.contiguous(), w, gids, expert_mask=mask,
                                quant_type=vendor.QuantType.per_1x128, w1_scale=s13,
                                w2_scale=(s2.float() * f2).contiguous())

    return {"moe_experts_fp8": moe_experts_fp8}


def aiter_fp8_ops(target: str) -> dict[str, Callable[..., Any]]:
    """The fp8 experts over the installed aiter (imported on the first call)."""
    class _Lazy:
        def __getattr__(self, name: str) -> Any:
            import aiter

            if name == "fused_moe":
                from aiter.fused_moe import fused_moe as f
                return f
            return getattr(aiter, name)
    return make_fp8_ops(_Lazy(), target)
