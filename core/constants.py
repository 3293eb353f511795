"""DeepSeek-V3.2 (671B release) model constants, SPEC §1. Cases, the model
graph and the profiler read shapes from here instead of restating numbers."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class V32:
    dim: int = 7168
    n_layers: int = 61
    n_dense_layers: int = 3
    vocab: int = 129280
    n_heads: int = 128
    q_lora_rank: int = 1536
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    inter_dim: int = 18432
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    n_activated_experts: int = 8
    moe_inter_dim: int = 2048
    n_expert_groups: int = 8
    n_limited_groups: int = 4
    route_scale: float = 2.5
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 2048
    fp8_block: int = 128
    rope_theta: float = 10000.0
    rope_factor: float = 40.0
    original_seq_len: int = 4096
    beta_fast: int = 32
    beta_slow: int = 1
    mscale: float = 1.0
    rms_eps: float = 1e-6

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def d_qk(self) -> int:
        """Absorbed (MQA) query/key width: latent + rope."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def d_v(self) -> int:
        return self.kv_lora_rank

    @property
    def softmax_scale(self) -> float:
        """192^-0.5 * mscale^2 with the YaRN attention mscale (long context)."""
        m = 0.1 * self.mscale * math.log(self.rope_factor) + 1.0
        return self.qk_head_dim ** -0.5 * m * m


DEEPSEEK_V32 = V32()
