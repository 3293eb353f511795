"""A DeepSeek-V3.2 checkpoint written by Hugging Face transformers loads as its
authors meant: the same logits in dsport's reference and torch backends as in
transformers, with the indexer's selection active (index_topk 8 of 64
positions), group-limited routing and YaRN. transformers is the independent
implementation here; nothing in the expected values comes from dsport."""
import pytest
import torch

transformers = pytest.importorskip("transformers", minversion="5.24")

from dsport.core.model import Model, load_config  # noqa: E402

SEQ, TOPK = 64, 8


def _config(**over):
    kw = dict(vocab_size=256, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
              first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, n_group=4,
              topk_group=2, num_experts_per_tok=2, n_shared_experts=1, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16,
              qk_rope_head_dim=16, v_head_dim=16, index_topk=TOPK, index_head_dim=32, max_position_embeddings=8192,
              # 16 indexer heads: with very few, relu(q.k) is exactly 0 for many keys and top-k is decided by ties
              index_n_heads=16, initializer_range=0.1, attn_implementation="eager",
              rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 1024,
                               "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0})
    return transformers.DeepseekV32Config(**{**kw, **over})


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.DeepseekV32ForCausalLM(_config()).float().eval()
    with torch.no_grad():  # a non-zero correction bias, so the group-limited choice is not the plain top-k
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.normal_(0, 0.1)
    out = tmp_path_factory.mktemp("hf-v32")
    model.save_pretrained(out)
    tokens = torch.randint(0, 256, (1, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(tokens).logits
    return out, tokens, logits


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).flatten()


def test_config_reads_as_written(hf_checkpoint):
    cfg = load_config(hf_checkpoint[0])
    assert (cfg.index_topk, cfg.index_head_dim, cfg.n_expert_groups, cfg.n_limited_groups) == (TOPK, 32, 4, 2)
    assert cfg.yarn and cfg.rope_factor == 8.0 and not cfg.fp8_weights and not cfg.index_fp8  # unquantized: float indexer


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_logits_match_transformers_with_selection_active(hf_checkpoint, backend):
    path, tokens, want = hf_checkpoint
    got = Model.from_pretrained(path, backend=backend)(tokens)
    cos = _cos(got, want)
    assert cos.min().item() > 0.9999, f"per-position cosine min {cos.min().item():.6f}"


def test_selection_really_is_active_and_fp8_scoring_is_an_option(hf_checkpoint):
    path, tokens, want = hf_checkpoint
    # the same weights with every key selected give other logits: top-8 of 64 matters here
    dense = transformers.DeepseekV32ForCausalLM.from_pretrained(path, index_topk=SEQ, attn_implementation="eager").float().eval()
    with torch.no_grad():
        assert _cos(dense(tokens).logits, want).min().item() < 0.999
    # FP8 scoring on request works for a 32-dim indexer head (the FP8 group follows index_head_dim) and is not the authors' result
    fp8 = Model.from_pretrained(path, backend="torch", indexer="fp8")(tokens)
    assert torch.isfinite(fp8).all() and _cos(fp8, want).min().item() < 0.9999
