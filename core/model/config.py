"""Model configuration from a Hugging Face ``config.json`` of DeepSeek-V3.2 /
V3.2-Exp, or V3 / V3.1 (no ``index_*`` keys: the same graph with dense MLA).

YaRN appears in two spellings in the wild: the release's ``rope_scaling``
({"type": "yarn", "factor", "original_max_position_embeddings", ...}) and the
newer ``rope_parameters`` ({"rope_type": "yarn", "rope_theta", ...}).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from dsport.core.errors import ConfigError


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

    @property
    def sparse(self) -> bool:
        return self.index_n_heads > 0

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

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

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face config.json for this configuration (release spelling)."""
        hf = {"architectures": ["DeepseekV32ForCausalLM" if self.sparse else "DeepseekV3ForCausalLM"],
              "model_type": "deepseek_v32" if self.sparse else "deepseek_v3"}
        hf.update({h: getattr(self, f) for h, f in _HF_NAMES.items()})
        hf["rope_scaling"] = {"type": "yarn", "factor": self.rope_factor, "original_max_position_embeddings": self.original_seq_len,
                              "beta_fast": self.beta_fast, "beta_slow": self.beta_slow, "mscale": self.mscale, "mscale_all_dim": self.mscale}
        if self.sparse:
            hf.update(index_n_heads=self.index_n_heads, index_head_dim=self.index_head_dim, index_topk=self.index_topk)
        if self.fp8_weights:
            hf["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                         "weight_block_size": [128, 128], "scale_fmt": self.scale_fmt}
        return hf


_HF_NAMES = {  # Hugging Face key -> ModelConfig field
    "vocab_size": "vocab_size", "hidden_size": "dim", "intermediate_size": "inter_dim",
    "moe_intermediate_size": "moe_inter_dim", "num_hidden_layers": "n_layers", "first_k_dense_replace": "n_dense_layers",
    "num_attention_heads": "n_heads", "n_routed_experts": "n_routed_experts", "n_shared_experts": "n_shared_experts",
    "num_experts_per_tok": "n_activated_experts", "n_group": "n_expert_groups", "topk_group": "n_limited_groups",
    "scoring_func": "score_func", "routed_scaling_factor": "route_scale", "q_lora_rank": "q_lora_rank",
    "kv_lora_rank": "kv_lora_rank", "qk_nope_head_dim": "qk_nope_head_dim", "qk_rope_head_dim": "qk_rope_head_dim",
    "v_head_dim": "v_head_dim", "max_position_embeddings": "max_seq_len", "rope_theta": "rope_theta", "rms_norm_eps": "rms_eps",
}
_YARN_KEYS = {"factor": "rope_factor", "original_max_position_embeddings": "original_seq_len",
              "beta_fast": "beta_fast", "beta_slow": "beta_slow", "mscale": "mscale", "rope_theta": "rope_theta"}


def from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Build a ModelConfig from a Hugging Face config dict; missing essentials are errors."""
    need = ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size", "kv_lora_rank", "qk_rope_head_dim")
    missing = [k for k in need if k not in hf]
    if missing:
        raise ConfigError(f"config.json: missing required keys {missing}")
    kw: dict[str, Any] = {f: hf[h] for h, f in _HF_NAMES.items() if h in hf and hf[h] is not None}
    rope = hf.get("rope_scaling") or hf.get("rope_parameters")
    if rope:
        kind = rope.get("type", rope.get("rope_type"))
        if kind not in ("yarn", "default", None):
            raise ConfigError(f"config.json: rope scaling type {kind!r} is not supported (expected 'yarn')")
        if kind == "yarn":
            kw.update({f: rope[k] for k, f in _YARN_KEYS.items() if k in rope})
        elif "rope_theta" in rope:
            kw["rope_theta"] = rope["rope_theta"]
    else:
        kw["rope_factor"] = 1.0
    if "index_n_heads" in hf:
        kw.update(index_n_heads=hf["index_n_heads"], index_head_dim=hf.get("index_head_dim", 128), index_topk=hf.get("index_topk", 2048))
    else:
        kw["index_n_heads"] = 0
    q = hf.get("quantization_config")
    kw["fp8_weights"] = bool(q and q.get("quant_method") == "fp8")
    if q:
        block = q.get("weight_block_size", [128, 128])
        if list(block) != [128, 128]:
            raise ConfigError(f"config.json: quantization_config.weight_block_size must be [128, 128], got {block}")
        kw["scale_fmt"] = q.get("scale_fmt") or "fp32"
    if kw.get("q_lora_rank") is None:
        raise ConfigError("config.json: q_lora_rank is null (V2-Lite style); only the low-rank query path is supported")
    return ModelConfig(**kw)


def load_config(path: str | Path) -> ModelConfig:
    p = Path(path)
    p = p / "config.json" if p.is_dir() else p
    try:
        return from_hf(json.loads(p.read_text()))
    except FileNotFoundError:
        raise ConfigError(f"config.json not found at {p}") from None


def tiny_config(**overrides: Any) -> ModelConfig:
    """A small config with every V3.2 feature (indexer, YaRN, MoE with groups,
    dense first layer) at CPU-friendly sizes; dims are multiples of 128 so the
    FP8 paths apply unchanged."""
    base = ModelConfig(vocab_size=512, dim=256, inter_dim=384, moe_inter_dim=128, n_layers=3, n_dense_layers=1, n_heads=4,
                       n_routed_experts=16, n_activated_experts=4, n_expert_groups=4, n_limited_groups=2, q_lora_rank=128,
                       kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=64, v_head_dim=64, max_seq_len=16384,
                       index_n_heads=4, index_head_dim=128, index_topk=64)
    unknown = set(overrides) - {f.name for f in fields(ModelConfig)}
    if unknown:
        raise ConfigError(f"tiny_config: unknown fields {sorted(unknown)}")
    return replace(base, **overrides)
