"""`dsport bench vs_transformers` on a tiny config: it runs, reports both
sides' throughput and the logits check, and that check fails when dsport's
model is wrong (one weight perturbed after loading)."""
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
    out = vt.run(_args())
    assert out["threads"] == 1 and out["rounds"] == 1 and out["prompt"] == 32
    for side in ("dsport", "transformers"):
        t = out["tokens_per_s"][side]
        assert t["prefill_tokens_per_s"] > 0 and t["decode_tokens_per_s"] > 0
    assert out["prefill_speedup"] > 0 and out["decode_speedup"] > 0
    assert out["logits_match"] and out["logits_cosine"]["auto"]["min"] > vt.COSINE_GOAL
    # the FP8 indexer is not what transformers computes: the check sees that difference
    assert out["logits_cosine"]["fp8"]["min"] < vt.COSINE_GOAL


def test_logits_check_fails_for_a_wrong_model(monkeypatch):
    load = vt.Model.from_pretrained

    def perturbed(*a, **kw):  # one attention projection of the last layer disturbed after loading
        model = load(*a, **kw)
        w = model.model.layers[-1].self_attn.o_proj.weight
        with torch.no_grad():
            w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)).to(w.dtype) * w.std())
        return model
    monkeypatch.setattr(vt.Model, "from_pretrained", perturbed)
    out = vt.run(_args())
    assert not out["logits_match"], out["logits_cosine"]
    assert "logits vs transformers" in out["failed_checks"][0]


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
