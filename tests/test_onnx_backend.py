"""The onnx backend's own promises, beyond the conformance matrix (which judges every op it serves
against the reference): the exact ue8m0 exponent on every power-of-two boundary, non-finite scales
for inf/NaN groups, ONNX Runtime's FP8 cast bytes, the TopK tie rule, SPEC §10 masking of poisoned
rows, the session cache, and availability reasons."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

onnx_backend = pytest.importorskip("dsport.backends.onnx")
if onnx_backend._IMPORT_ERROR:
    pytest.skip(f"onnx extra not installed: {onnx_backend._IMPORT_ERROR}", allow_module_level=True)

from dsport.backends.onnx import dsa, quant, runtime  # noqa: E402


def _pow2_ceil_exact(x: float) -> float:
    """2^ceil(log2 x) from Python's exact frexp (x = m * 2^e, 0.5 <= m < 1)."""
    m, e = math.frexp(x)
    return math.ldexp(1.0, e - 1 if m == 0.5 else e)


def test_pow2_ceil_exact_on_every_power_of_two_boundary():
    ks = torch.arange(quant.POW2_LO, quant.POW2_HI)
    p = torch.ldexp(torch.ones(len(ks)), ks)                       # every float32 power of two up to 2^126
    up = torch.nextafter(p, torch.tensor(math.inf))
    down = torch.nextafter(p, torch.tensor(0.0))[1:]               # below 2^-149 is 0
    s = torch.cat([p, up, down, torch.tensor([1e-4 / 448, 1e-4 / 240, 3.0, 0.75])])
    got = quant.pow2_ceil(s)
    want = torch.tensor([_pow2_ceil_exact(v) for v in s.tolist()], dtype=torch.float32)
    bad = (got != want).nonzero().flatten()
    assert bad.numel() == 0, f"{bad.numel()} wrong, e.g. s={s[bad[:3]].tolist()} -> {got[bad[:3]].tolist()}"


def test_pow2_ceil_steps_over_each_boundary():
    # just above 2^k the answer is 2^(k+1); exactly at 2^k it is 2^k: both sides of every boundary, no tolerance
    ks = torch.arange(quant.POW2_LO, quant.POW2_HI - 1)
    p = torch.ldexp(torch.ones(len(ks)), ks)
    assert torch.equal(quant.pow2_ceil(p), p)
    assert torch.equal(quant.pow2_ceil(torch.nextafter(p, torch.tensor(math.inf))), 2 * p)


def test_ue8m0_scale_of_inf_and_nan_groups_is_not_finite():
    x = torch.randn(3, 256)
    x[0, 3] = math.nan
    x[1, 200] = math.inf
    y, s = quant.act_quant(x, scale_fmt="ue8m0")
    assert math.isnan(s[0, 0]) and math.isinf(s[1, 1]), s  # SPEC §10: never a finite stand-in such as 1
    assert torch.isfinite(s[0, 1]) and torch.isfinite(s[1, 0]) and torch.isfinite(s[2]).all()
    assert float(s[2, 0]) == _pow2_ceil_exact(float(x[2, :128].abs().max()) / 448.0)


@pytest.mark.parametrize("fmt,dtype,fmax", [("e4m3fn", torch.float8_e4m3fn, 448.0), ("e4m3fnuz", torch.float8_e4m3fnuz, 240.0)])
def test_fp8_cast_saturates_and_rounds_to_nearest_even(fmt, dtype, fmax):
    x = torch.zeros(1, 128)
    # a group whose amax is exactly fmax (scale 1 in both scale formats) so y = cast(x) element by element
    vals = [fmax, -fmax, 1.0 + 1 / 16, 1.0 + 3 / 16, -0.0, 1e-9]
    x[0, : len(vals)] = torch.tensor(vals)
    y, s = quant.act_quant(x, fmt=fmt, scale_fmt="fp32")
    assert float(s) == 1.0
    got = y.float()[0, : len(vals)].tolist()
    # 1 + 1/16 is halfway between 1 and 1.125: ties to even (1.0); 1 + 3/16 ties up to 1.25
    assert got[:4] == [fmax, -fmax, 1.0, 1.25]
    if fmt == "e4m3fnuz":  # no negative zero: -0 is written as byte 0x00 (0x80 is NaN)
        assert int(y.view(torch.uint8)[0, 4]) == 0x00


def test_topk_ties_pick_the_lowest_positions():
    logits = torch.zeros(3, 16)
    logits[1, 10:] = 1.0                              # 6 winners, then 10 tied zeros for the last 2 places
    logits[2, 5] = -math.inf                           # an in-window -inf still beats positions outside the window
    ks = torch.tensor([0, 0, 4], dtype=torch.int32)
    ke = torch.tensor([16, 16, 7], dtype=torch.int32)
    idx = dsa.topk_select(logits, 8, ks, ke)
    assert sorted(idx[0].tolist()) == list(range(8))
    assert sorted(idx[1].tolist()) == [0, 1, *range(10, 16)]
    assert sorted(idx[2].tolist()) == [-1] * 5 + [4, 5, 6]


def test_sparse_mla_never_reads_rows_behind_invalid_indices():
    g = torch.Generator().manual_seed(0)
    t, h, s, k, d, dv = 4, 2, 12, 6, 80, 64
    q = torch.randn(t, h, d, generator=g)
    kv = torch.randn(s, 1, d, generator=g)
    idx = torch.randint(0, 8, (t, 1, k), generator=g, dtype=torch.int32)
    idx[0, 0, 1], idx[1, 0, 2], idx[2, 0, :] = -1, s + 3, -1             # -1, past the end, a row with nothing valid
    poisoned = kv.clone()
    poisoned[8:] = math.nan                                                 # rows nobody names
    poisoned[0] = math.nan                                                  # the row a clamped index would land on
    idx = torch.where(idx == 0, torch.ones_like(idx), idx)                  # ...and that no valid index names
    clean = dsa.sparse_mla_prefill(q, kv, idx, 0.1, dv)
    dirty = dsa.sparse_mla_prefill(q, poisoned, idx, 0.1, dv)
    for a, b in zip(clean, dirty):
        assert torch.equal(a, b)
    out, lse, mx = dirty
    assert torch.isfinite(out).all() and float(out[2].abs().max()) == 0.0
    assert torch.isneginf(lse[2]).all() and torch.isneginf(mx[2]).all() and torch.isfinite(lse[[0, 1, 3]]).all()


def test_planted_product_masking_lets_nan_through():
    """The check above can fail: masking by a product (p * valid) instead of a selection leaks the NaN row."""
    g = runtime.Graph("planted")
    p = g.input("p", runtime.FLOAT, (1, 2))
    v = g.input("v", runtime.FLOAT, (2, 3))
    g.output(g.MatMul(p, v), "o", runtime.FLOAT, (1, 3))
    run = runtime.compile_graph(g, [("o", torch.float32, (1, 3))])
    v_t = torch.tensor([[1.0, 2.0, 3.0], [math.nan] * 3])
    assert torch.isnan(run(p=torch.tensor([[1.0, 0.0]]), v=v_t)[0]).all()


def test_sessions_are_built_once_per_signature():
    x = torch.randn(3, 128)
    quant.act_quant(x)
    n = runtime.session_count()
    quant.act_quant(torch.randn(3, 128))
    assert runtime.session_count() == n
    quant.act_quant(torch.randn(5, 128))
    assert runtime.session_count() == n + 1


@pytest.mark.parametrize("section, fragment", [
    ({"opset": "21"}, "onnx.opset: expected int, got str '21'"),
    ({"opset": True}, "onnx.opset: expected int, got bool True"),
    ({"opset": 18}, "onnx.opset: expected at least 21, got 18"),
    ({"providers": ["CPUExecutionProvider", "CUDAExecutionProvder"]},
     "onnx.providers: unknown name 'CUDAExecutionProvder' (did you mean 'CUDAExecutionProvider'?)"),
    ({"providers": "CPUExecutionProvider"}, "onnx.providers: expected list[str], got str"),
    ({"threds": 2}, "onnx: option: unknown name 'threds' (did you mean 'threads'?)"),
    ([21], "onnx: expected a mapping of options ['opset', 'providers', 'threads'], got list"),
])
def test_the_onnx_section_is_checked_with_named_errors(section, fragment):
    from dsport.core.config import from_mapping
    from dsport.core.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        from_mapping({"backend": "onnx", "onnx": section})
    assert fragment in str(e.value)


def test_the_registry_hands_the_onnx_section_over_and_the_environment_wins(tmp_path, monkeypatch):
    from dsport.core.config import load_config
    from dsport.core.registry import plan

    f = tmp_path / "onnx.yaml"
    f.write_text("backend: onnx\nfallback: fallback\nonnx: {threads: 2, providers: [CPUExecutionProvider]}\n")
    monkeypatch.delenv("DSPORT_ONNX_THREADS", raising=False)
    before = runtime.SETTINGS
    try:
        cfg = load_config(f, env={})
        assert dict(cfg.backend_options) == {"onnx": {"threads": 2, "providers": ["CPUExecutionProvider"]}}
        assert plan(cfg).backends["onnx"].ok and runtime.SETTINGS.threads == 2
        monkeypatch.setenv("DSPORT_ONNX_THREADS", "3")
        plan(cfg)
        assert runtime.SETTINGS.threads == 3  # the environment variable overrides the file
        monkeypatch.setenv("DSPORT_ONNX_THREADS", "three")
        b = plan(cfg).backends["onnx"]
        assert not b.ok and "$DSPORT_ONNX_THREADS: expected int, got 'three'" in b.reason
    finally:
        runtime.configure(before.opset, before.providers, before.threads)


def test_readme_onnx_options_table_is_the_declaration():
    import pathlib
    import re

    from dsport.backends.onnx.options import OPTIONS
    from dsport.core.backend import options_markdown

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"<!-- onnx options:.*?-->\n(.*?)\n<!-- /onnx options -->", text, re.S)
    assert block and block.group(1).strip() == options_markdown(OPTIONS).strip()


def test_configure_refuses_an_opset_without_fp8():
    with pytest.raises(ValueError, match="opset 18"):
        runtime.configure(opset=18)


AVAILABILITY_SCRIPT = """
import importlib, os, sys
import dsport.backends.onnx as b
def probe(**env):
    os.environ.update(env)
    for name in [m for m in sys.modules if m.startswith("dsport.backends.onnx.")]:
        del sys.modules[name]  # the op modules and runtime are imported afresh by the package
        b.__dict__.pop(name.rsplit(".", 1)[1], None)
    print(b.available() if not importlib.reload(b)._IMPORT_ERROR else (False, b._IMPORT_ERROR), len(b.OPS), sep=" | ")
probe(DSPORT_ONNX_PROVIDERS="NoSuchExecutionProvider")
probe(DSPORT_ONNX_PROVIDERS="CPUExecutionProvider", DSPORT_ONNX_OPSET="twenty-one")
probe(DSPORT_ONNX_OPSET="21")
sys.modules["onnxruntime"] = None
probe()
"""


def test_available_names_what_is_missing():
    # one fresh interpreter (the settings are read at import), four situations in turn
    out = subprocess.run([sys.executable, "-c", AVAILABILITY_SCRIPT], capture_output=True, text=True, timeout=300)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4, out.stderr[-2000:]
    assert lines[0].startswith("(False") and "NoSuchExecutionProvider" in lines[0]
    assert lines[1].startswith("(False") and "$DSPORT_ONNX_OPSET: expected int, got 'twenty-one'" in lines[1]
    assert lines[2].startswith("(True") and "opset 21" in lines[2]
    assert lines[3].startswith("(False") and "onnxruntime" in lines[3] and "dsport[onnx]" in lines[3] and lines[3].endswith("| 0")


def test_f32_from_bytes_is_a_bit_exact_bitcast():
    from dsport.backends.onnx.bytes import f32_from_bytes

    vals = torch.tensor([0.0, -0.0, 1.0, -2.5, 1e-45, -1e-40, 1.17549435e-38, 3.4028235e38, math.inf, -math.inf,
                         math.nan, 2.0 ** -20, 0.1], dtype=torch.float32)
    vals = torch.cat([vals, torch.randn(200) * 1e3, torch.rand(50) * 1e-38])
    raw = vals.view(torch.uint8).reshape(-1, 4)
    g = runtime.Graph("f32_from_bytes")
    g.output(f32_from_bytes(g, g.input("b", runtime.TORCH_TO_ONNX[torch.uint8], raw.shape)), "v", runtime.FLOAT, (len(vals),))
    got = runtime.compile_graph(g, [("v", torch.float32, (len(vals),))])(b=raw)[0]
    nan = torch.isnan(vals)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got[~nan].view(torch.int32), vals[~nan].view(torch.int32))  # -0 and subnormals included


def test_f32_and_fp8_byte_writers_are_bit_exact():
    from dsport.backends.onnx.bytes import f32_bytes, fp8_codes

    vals = torch.tensor([0.0, -0.0, 1.0, -2.5, 1e-45, -1e-40, 1.17549435e-38, 3.4028235e38, math.inf, -math.inf,
                         2.0 ** -20, 0.1], dtype=torch.float32)
    vals = torch.cat([vals, torch.randn(200) * 1e3, torch.rand(50) * 1e-38])
    g = runtime.Graph("f32_bytes")
    g.output(f32_bytes(g, g.input("x", runtime.FLOAT, vals.shape)), "b", runtime.TORCH_TO_ONNX[torch.uint8], (len(vals), 4))
    got = runtime.compile_graph(g, [("b", torch.uint8, (len(vals), 4))])(x=vals)[0]
    assert torch.equal(got, vals.view(torch.uint8).reshape(-1, 4))
    for fmt, dtype in (("e4m3fn", torch.float8_e4m3fn), ("e4m3fnuz", torch.float8_e4m3fnuz)):
        codes = torch.arange(256, dtype=torch.uint8)
        values = codes.view(dtype).float()
        keep = ~torch.isnan(values)
        g = runtime.Graph("fp8_codes")
        from dsport.core.fp8 import fp8_format
        g.output(fp8_codes(g, g.input("y", runtime.FLOAT, (int(keep.sum()),)), fp8_format(fmt)), "c",
                 runtime.TORCH_TO_ONNX[torch.uint8], (int(keep.sum()),))
        got = runtime.compile_graph(g, [("c", torch.uint8, (int(keep.sum()),))])(y=values[keep].contiguous())[0]
        assert torch.equal(got, codes[keep]), fmt
