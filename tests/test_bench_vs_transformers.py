"""`dsport bench vs_transformers` on a tiny config: it runs, reports both
sides' throughput and the logits check, and each half of that check fails
when dsport's model is wrong: a perturbed attention projection (logits under
shared choices differ), a perturbed indexer key projection (chosen keys differ
by more than rounding ties) and a router that drops its correction bias
(chosen experts differ)."""
import argparse

import pytest
import torch

pytest.importorskip("transformers", minversion="5.24")

from dsport.core.bench import vs_transformers as vt  # noqa: E402

TINY = ["--layers", "2", "--dim", "64", "--heads", "4", "--experts", "8", "--vocab", "256", "--index-topk", "8",
        "--prompt", "32", "--decode", "2", "--rounds", "1"]


def _args(extra=()):
    p = argparse.ArgumentParser()
    vt.add_arguments(p)
    return p.parse_args([*TINY, *extra])


def test_reports_throughput_and_matching_logits():
    out = vt.run(_args(["--prompt", "32", "48"]))
    assert out["threads"] == 1 and out["rounds"] == 1 and [p["prompt"] for p in out["prompts"]] == [32, 48]
    for p in out["prompts"]:
        for side in ("dsport", "transformers"):
            t = p["tokens_per_s"][side]
            assert t["prefill_tokens_per_s"] > 0 and t["decode_tokens_per_s"] > 0
        assert p["prefill_speedup"] > 0 and p["decode_speedup"] > 0
        assert p["logits_match"] and p["logits_cosine"]["shared_choices"]["min"] > vt.COSINE_GOAL
        keys, experts = p["choices"]["keys"], p["choices"]["experts"]
        assert keys["rows"] == 2 * p["prompt"] and experts["rows"] == p["prompt"]   # 2 layers, the second MoE
        assert keys["ties_only"] and experts["ties_only"]
        # the FP8 indexer is not what transformers computes: the check sees that difference
        assert p["logits_cosine"]["fp8"]["min"] < vt.COSINE_GOAL
    assert out["logits_match"] and "failed_checks" not in out


def _perturbed(monkeypatch, weight, noise=True):
    load = vt.Model.from_pretrained

    def perturbed(*a, **kw):  # weights of the model disturbed (or zeroed) after loading
        model = load(*a, **kw)
        for layer in model.model.layers:
            w = weight(layer)
            if w is None:
                continue
            with torch.no_grad():
                if noise:
                    w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)).to(w.dtype) * w.std())
                else:
                    w.zero_()
        return model
    monkeypatch.setattr(vt.Model, "from_pretrained", perturbed)


def test_logits_check_fails_for_a_wrong_attention(monkeypatch):
    _perturbed(monkeypatch, lambda layer: layer.self_attn.o_proj.weight)
    out = vt.run(_args())
    assert not out["logits_match"], out["prompts"][0]["logits_cosine"]
    assert "with shared choices" in out["failed_checks"][0]


@pytest.mark.parametrize("kind, weight, noise", [
    ("keys", lambda layer: layer.self_attn.indexer.wk.weight, True),   # dsport's indexer scores other keys
    ("experts", lambda layer: getattr(getattr(layer.mlp, "gate", None), "e_score_correction_bias", None), False),
])
def test_choice_check_fails_for_a_wrong_indexer_or_router(monkeypatch, kind, weight, noise):
    _perturbed(monkeypatch, weight, noise)
    out = vt.run(_args())
    c = out["prompts"][0]["choices"][kind]
    assert not out["logits_match"] and c["differing_rows"] > 0.1 * c["rows"] and c["max_gap"] > vt.sc.TIE_GAP
    assert any(f"chosen {kind} differ" in f for f in out["failed_checks"])
    # with those choices shared, the rest of the model still agrees: only the choice check can see these bugs
    assert out["prompts"][0]["logits_cosine"]["shared_choices"]["min"] > vt.COSINE_GOAL


def test_a_failed_accuracy_check_makes_the_bench_command_exit_1(monkeypatch, capsys):
    # `dsport bench` reports a missed speed target and exits 0, but not figures whose accuracy check failed
    import sys
    import types

    from dsport.core.cli import bench as cli_bench
    from dsport.core.cli import main

    fake = types.ModuleType("fake_bench")
    fake.DESCRIPTION, fake.add_arguments = "test-only", lambda p: p.add_argument("--fail", action="store_true")
    fake.run = lambda a: {"failed_checks": ["logits differ"]} if a.fail else {"speedup": 0.5}
    monkeypatch.setitem(sys.modules, "fake_bench", fake)
    monkeypatch.setattr(cli_bench, "benchmarks", lambda: {"fake": "fake_bench"})
    assert main(["bench", "fake"]) == 0
    assert main(["bench", "fake", "--fail"]) == 1
    assert "accuracy check failed: logits differ" in capsys.readouterr().err


def test_prompt_must_exceed_index_topk():
    with pytest.raises(SystemExit, match="--index-topk"):
        vt.run(_args(["--prompt", "8"]))
