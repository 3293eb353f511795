"""DeepSeek-V3.2 model constants (SPEC §1) as one dataclass whose defaults
are the 671B release. Op cases, the profiler, kernels' build shapes and the
model graph read shapes from here; a Hugging Face config.json becomes one of
these through :mod:`dsport.core.model.config`."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Defaults are the 671B release (SPEC §1)."""

    vocab_size: int = 129280
    dim: int = 7168
    inter_dim: int = 18432
    moe_inter_dim: int = 2048
    n_layers: int = 61
    n_dense_layers: int = 3
    n_heads: int = 128
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    n_activated_experts: int = 8
    n_expert_groups: int = 8
    n_limited_groups: int = 4
    score_func: str = "sigmoid"
    route_scale: float = 2.5
    q_lora_rank: int = 1536
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    max_seq_len: int = 163840
    rope_theta: float = 10000.0
    rope_factor: float = 40.0
    original_seq_len: int = 4096
    beta_fast: float = 32
    beta_slow: float = 1
    mscale: float = 1.0
    rms_eps: float = 1e-6
    index_n_heads: int = 64          # 0: no indexer (V3 / V3.1): dense MLA
    index_head_dim: int = 128
    index_topk: int = 2048
    fp8_weights: bool = True         # quantization_config present: fp8 128x128-block weights
    scale_fmt: str = "ue8m0"
    fp8_block: int = 128             # quantization group (activations) and block edge (weights)
    index_fp8: bool = True           # indexer scores in FP8 (quantized releases) or in float (unquantized checkpoints)
    n_nextn_layers: int = 0          # multi-token-prediction layers stored after the decoder's (num_nextn_predict_layers)
    # how the graph runs, not what the checkpoint holds (Model.from_pretrained's kv_cache= and moe= options)
    index_paged: bool = True         # FP8 128-dim ue8m0 indexer keys in DeepGEMM's paged cache (else one flat FP8 cache)
    kv_cache_fp8: bool = False       # the 656-byte FP8 latent cache (FlashMLA's layout) instead of a float cache
    moe_grouped_gemm: bool = False   # routed experts as 128-row-aligned grouped GEMMs (DeepGEMM's contiguous layout)

    @property
    def sparse(self) -> bool:
        return self.index_n_heads > 0

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def d_qk(self) -> int:
        """Absorbed (MQA) query/key width: latent + rope (576 in the release)."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def d_v(self) -> int:
        """Absorbed value width: the latent (512 in the release)."""
        return self.kv_lora_rank

    @property
    def yarn(self) -> bool:
        return self.max_seq_len > self.original_seq_len and self.rope_factor > 1

    @property
    def softmax_scale(self) -> float:
        """qk_head_dim^-0.5, times mscale^2 when YaRN extends the context."""
        scale = self.qk_head_dim ** -0.5
        if self.yarn:
            m = 0.1 * self.mscale * math.log(self.rope_factor) + 1.0
            scale *= m * m
        return scale


DEEPSEEK_V32 = ModelConfig()
