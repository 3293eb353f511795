"""Hugging Face config.json parsing: both YaRN spellings, V3 without the indexer, clear errors."""

import pytest

from dsport.core.errors import ConfigError
from dsport.core.model.config import ModelConfig, from_hf

RELEASE = {
    "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
    "num_hidden_layers": 61, "first_k_dense_replace": 3, "num_attention_heads": 128, "n_routed_experts": 256,
    "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid", "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "v_head_dim": 128, "max_position_embeddings": 163840, "rope_theta": 10000, "rms_norm_eps": 1e-6,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                     "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    "index_n_heads": 64, "index_head_dim": 128, "index_topk": 2048,
    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                            "weight_block_size": [128, 128], "scale_fmt": "ue8m0"},
}


def test_release_config_matches_spec_constants():
    cfg = from_hf(RELEASE)
    assert cfg == ModelConfig()  # the dataclass defaults are SPEC §1
    assert cfg.sparse and cfg.fp8_weights and cfg.scale_fmt == "ue8m0"
    # 192^-0.5 * (0.1 ln 40 + 1)^2, by hand: 0.0721688 * 1.368888^2 = 0.1352338
    assert cfg.softmax_scale == pytest.approx(0.1352338, abs=1e-7)


def test_rope_parameters_spelling_is_equivalent():
    newer = {k: v for k, v in RELEASE.items() if k not in ("rope_scaling", "rope_theta")}
    newer["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000, "factor": 40,
                                "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0}
    assert from_hf(newer) == from_hf(RELEASE)


def test_v3_config_without_indexer_is_dense():
    v3 = {k: v for k, v in RELEASE.items() if not k.startswith("index_")}
    cfg = from_hf(v3)
    assert not cfg.sparse and cfg.index_n_heads == 0


def test_short_context_has_no_yarn_mscale():
    cfg = from_hf({**RELEASE, "max_position_embeddings": 4096})
    assert cfg.softmax_scale == pytest.approx(192 ** -0.5)


def test_round_trip_through_hf_json():
    cfg = ModelConfig(n_layers=2, index_topk=64)
    assert from_hf(cfg.to_hf()) == cfg


@pytest.mark.parametrize("patch, fragment", [
    ({"hidden_size": None}, "missing required keys"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2}}, "rope scaling type 'dynamic'"),
    ({"quantization_config": {"quant_method": "fp8", "weight_block_size": [64, 64]}}, "weight_block_size"),
])
def test_bad_configs_are_named(patch, fragment):
    bad = {**RELEASE, **patch}
    bad = {k: v for k, v in bad.items() if v is not None}
    with pytest.raises(ConfigError, match=fragment):
        from_hf(bad)
