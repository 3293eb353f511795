"""Model configuration from a Hugging Face ``config.json`` of DeepSeek-V3.2 /
V3.2-Exp, or V3 / V3.1 (no ``index_*`` keys: the same graph with dense MLA).

YaRN appears in two spellings in the wild: the release's ``rope_scaling``
({"type": "yarn", "factor", "original_max_position_embeddings", ...}) and the
newer ``rope_parameters`` ({"rope_type": "yarn", "rope_theta", ...}).
"""
from __future__ import annotations

import json
import math
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from ..constants import ModelConfig
from ..errors import ConfigError
from ..files import read_text
from ..fp8 import SCALE_FORMATS


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


# Hugging Face key -> (kind, minimum): every value is type- and range-checked when the file is read,
# so a bad value is named by its key there, not found by an op at forward time
_INT, _FLOAT = "integer", "number"
_RULES: dict[str, tuple[str, float]] = {
    "vocab_size": (_INT, 1), "hidden_size": (_INT, 1), "intermediate_size": (_INT, 1), "moe_intermediate_size": (_INT, 1),
    "num_hidden_layers": (_INT, 1), "first_k_dense_replace": (_INT, 0), "num_attention_heads": (_INT, 1),
    "n_routed_experts": (_INT, 1), "n_shared_experts": (_INT, 0), "num_experts_per_tok": (_INT, 1), "n_group": (_INT, 1),
    "topk_group": (_INT, 1), "q_lora_rank": (_INT, 1), "kv_lora_rank": (_INT, 1), "qk_nope_head_dim": (_INT, 0),
    "qk_rope_head_dim": (_INT, 2), "v_head_dim": (_INT, 1), "max_position_embeddings": (_INT, 1),
    "index_n_heads": (_INT, 1), "index_head_dim": (_INT, 1), "index_topk": (_INT, 1), "num_nextn_predict_layers": (_INT, 0),
    "rope_theta": (_FLOAT, 0), "rms_norm_eps": (_FLOAT, 0), "routed_scaling_factor": (_FLOAT, 0),
}
_YARN_RULES: dict[str, tuple[str, float]] = {"factor": (_FLOAT, 1), "original_max_position_embeddings": (_INT, 1),
                                            "beta_fast": (_FLOAT, 0), "beta_slow": (_FLOAT, 0), "mscale": (_FLOAT, 0),
                                            "mscale_all_dim": (_FLOAT, 0), "rope_theta": (_FLOAT, 0)}
SCORE_FUNCS = ("sigmoid", "softmax")
INDEXER_PRECISIONS = ("auto", "fp8", "float")


def _check(where: str, key: str, v: Any, kind: str, minimum: float) -> None:
    ok = (isinstance(v, int) if kind == _INT else isinstance(v, (int, float))) and not isinstance(v, bool)
    if not ok:
        raise ConfigError(f"{where}: {key}: expected {'an integer' if kind == _INT else 'a number'}, got {type(v).__name__} {v!r}")
    if kind == _FLOAT and not math.isfinite(v):
        raise ConfigError(f"{where}: {key}: expected a finite number, got {v!r}")
    if v < minimum or (minimum == 0 and kind == _FLOAT and v == 0):
        bound = f">= {minimum}" if not (minimum == 0 and kind == _FLOAT) else "> 0"
        raise ConfigError(f"{where}: {key}: expected {bound}, got {v!r}")


def _validate(hf: dict[str, Any], where: str) -> None:
    for key, (kind, minimum) in _RULES.items():
        if hf.get(key) is not None:
            _check(where, key, hf[key], kind, minimum)
    if hf.get("scoring_func") is not None and hf["scoring_func"] not in SCORE_FUNCS:
        raise ConfigError(f"{where}: scoring_func: expected one of {list(SCORE_FUNCS)}, got {hf['scoring_func']!r}")
    g = lambda k, d: hf.get(k) if hf.get(k) is not None else d  # noqa: E731
    experts, groups = g("n_routed_experts", 256), g("n_group", 8)
    if experts % groups:
        raise ConfigError(f"{where}: n_group: expected a divisor of n_routed_experts ({experts}), got {groups}")
    if g("topk_group", 4) > groups:
        raise ConfigError(f"{where}: topk_group: expected <= n_group ({groups}), got {g('topk_group', 4)}")
    if g("num_experts_per_tok", 8) > experts:
        raise ConfigError(f"{where}: num_experts_per_tok: expected <= n_routed_experts ({experts}), got {g('num_experts_per_tok', 8)}")
    if g("num_experts_per_tok", 8) > g("topk_group", 4) * (experts // groups):
        raise ConfigError(f"{where}: num_experts_per_tok: expected <= topk_group * experts per group "
                          f"({g('topk_group', 4)} * {experts // groups}), got {g('num_experts_per_tok', 8)}")
    if g("qk_rope_head_dim", 64) % 2:
        raise ConfigError(f"{where}: qk_rope_head_dim: expected an even number (rotary pairs), got {g('qk_rope_head_dim', 64)}")
    if "index_n_heads" in hf and g("index_head_dim", 128) < g("qk_rope_head_dim", 64):
        raise ConfigError(f"{where}: index_head_dim: expected >= qk_rope_head_dim ({g('qk_rope_head_dim', 64)}: the indexer "
                          f"rotates its first qk_rope_head_dim dims), got {g('index_head_dim', 128)}")
    for rkey in ("rope_scaling", "rope_parameters"):
        rope = hf.get(rkey)
        if rope is None:
            continue
        if not isinstance(rope, dict):
            raise ConfigError(f"{where}: {rkey}: expected a mapping, got {type(rope).__name__} {rope!r}")
        for key, (kind, minimum) in _YARN_RULES.items():
            if rope.get(key) is not None:
                _check(where, f"{rkey}.{key}", rope[key], kind, minimum)
    q = hf.get("quantization_config")
    if q is not None:
        if not isinstance(q, dict):
            raise ConfigError(f"{where}: quantization_config: expected a mapping, got {type(q).__name__} {q!r}")
        if q.get("quant_method") != "fp8":
            raise ConfigError(f"{where}: quantization_config.quant_method: expected 'fp8', got {q.get('quant_method')!r}")
        if q.get("fmt") not in (None, "e4m3"):
            raise ConfigError(f"{where}: quantization_config.fmt: expected 'e4m3', got {q.get('fmt')!r}")
        if q.get("scale_fmt") is not None and q["scale_fmt"] not in SCALE_FORMATS:
            raise ConfigError(f"{where}: quantization_config.scale_fmt: expected one of {sorted(SCALE_FORMATS)} (or null: fp32), "
                              f"got {q['scale_fmt']!r}")


def from_hf(hf: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """Build a ModelConfig from a Hugging Face config dict. Missing essentials and
    values of the wrong type or range are ConfigErrors naming the key."""
    if not isinstance(hf, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(hf).__name__}")
    need = ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size", "kv_lora_rank", "qk_rope_head_dim")
    missing = [k for k in need if k not in hf]
    if missing:
        raise ConfigError(f"{where}: missing required keys {missing}")
    _validate(hf, where)
    kw: dict[str, Any] = {f: hf[h] for h, f in _HF_NAMES.items() if h in hf and hf[h] is not None}
    kw["n_nextn_layers"] = hf.get("num_nextn_predict_layers") or 0
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
        if not isinstance(block, (list, tuple)) or list(block) != [128, 128]:
            raise ConfigError(f"{where}: quantization_config.weight_block_size must be [128, 128], got {block}")
        kw["scale_fmt"] = q.get("scale_fmt") or "fp32"
    # the indexer scores as the checkpoint's authors did: FP8 with a quantized release, in float without one
    kw["index_fp8"] = kw["fp8_weights"]
    if kw.get("q_lora_rank") is None:
        raise ConfigError(f"{where}: q_lora_rank is null (V2-Lite style); only the low-rank query path is supported")
    return ModelConfig(**kw)


def load_config(path: str | Path) -> ModelConfig:
    p = Path(path)
    p = p / "config.json" if p.is_dir() else p
    if not p.exists():
        raise ConfigError(f"config.json not found at {p}")
    try:
        hf = json.loads(read_text(p, "a JSON model config"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return from_hf(hf, str(p))


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


def to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The Hugging Face config.json for this configuration (release spelling)."""
    hf = {"architectures": ["DeepseekV32ForCausalLM" if cfg.sparse else "DeepseekV3ForCausalLM"],
          "model_type": "deepseek_v32" if cfg.sparse else "deepseek_v3"}
    hf.update({h: getattr(cfg, f) for h, f in _HF_NAMES.items()})
    hf["rope_scaling"] = {"type": "yarn", "factor": cfg.rope_factor, "original_max_position_embeddings": cfg.original_seq_len,
                          "beta_fast": cfg.beta_fast, "beta_slow": cfg.beta_slow, "mscale": cfg.mscale, "mscale_all_dim": cfg.mscale}
    if cfg.sparse:
        hf.update(index_n_heads=cfg.index_n_heads, index_head_dim=cfg.index_head_dim, index_topk=cfg.index_topk)
    if cfg.fp8_weights:
        hf["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [128, 128], "scale_fmt": cfg.scale_fmt}
    return hf
