"""The HIP kernels' scalar building blocks (hip_kernels/*.h), compiled for the
CPU with g++, against torch's float8 dtypes and against the reference on the
conformance cases. Device-only paths (the conversion instructions, MFMA, LDS,
wave shuffles) are not exercised here: only a gfx942 / gfx950 run checks them."""
import math

import pytest
import torch

from dsport.backends.hip import host
from dsport.backends.reference import OPS as REF
from dsport.core.fp8 import E4M3FN, E4M3FNUZ, pow2_ceil
from dsport.core.spec import specs

FORMATS = [E4M3FN, E4M3FNUZ]


def _cases(op):
    return [(c.id, c.inputs()) for c in specs()[op].cases()]


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_decode_every_byte_is_torchs(fmt):
    b = torch.arange(256, dtype=torch.uint8)
    ref, got = b.view(fmt.dtype).float(), host.decode(b, fmt)
    assert torch.equal(ref.isnan(), got.isnan()) and int(ref.isnan().sum()) == (1 if fmt is E4M3FNUZ else 2)
    fin = ~ref.isnan()
    assert torch.equal(got[fin].view(torch.int32), ref[fin].view(torch.int32))  # bit-exact, -0 included
    assert got[0x80].isnan() == (fmt is E4M3FNUZ)


def _encode_probe(fmt) -> torch.Tensor:
    """Every representable value, every midpoint between neighbours and one float either side of it,
    values that round to +-0, saturation and non-finite values, plus a random sweep."""
    vals = torch.arange(256, dtype=torch.uint8).view(fmt.dtype).float()
    s = vals[~vals.isnan()].unique().sort().values
    mids = (s[1:] + s[:-1]) / 2
    up, down = torch.nextafter(mids, torch.tensor(math.inf)), torch.nextafter(mids, torch.tensor(-math.inf))
    tiny = s[s > 0].min().item()
    to_zero = torch.tensor([0.0, -0.0, tiny / 2, -tiny / 2, tiny / 4, -tiny / 4, 1e-30, -1e-30, -1e-45, 1e-45])
    special = torch.tensor([math.nan, -math.nan, math.inf, -math.inf, 1e30, -1e30, fmt.max * 1.03, -fmt.max * 1.5, 464.0, -464.0])
    sweep = torch.randn(20000, generator=torch.Generator().manual_seed(0)) * fmt.max / 3
    return torch.cat([s, mids, up, down, to_zero, special, sweep, sweep * 1e-3])


def _encode_mismatches(x, got, fmt):
    ref = fmt.cast(x).view(torch.uint8)
    return [(x[i].item(), hex(got[i]), hex(ref[i])) for i in (got != ref).nonzero().flatten()[:5].tolist()]


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_encode_is_torchs_saturating_cast(fmt):
    x = _encode_probe(fmt)
    assert not _encode_mismatches(x, host.encode(x, fmt), fmt)


def test_the_encode_check_catches_the_classic_amd_slips():
    x = _encode_probe(E4M3FNUZ)
    # planted: an fnuz encoder that keeps the sign of values rounding to zero (writes 0x80, fnuz's NaN)
    neg_zero = host.encode(x, E4M3FNUZ).clone()
    neg_zero[(neg_zero == 0) & (torch.signbit(x))] = 0x80
    assert _encode_mismatches(x, neg_zero, E4M3FNUZ)
    # planted: e4m3fn bytes handed over as fnuz (448 -> reads 224)
    assert _encode_mismatches(x, host.encode(x, E4M3FN), E4M3FNUZ)
    # planted: no saturation (values past 240 wrap into NaN instead of clamping)
    unsat = host.encode(x, E4M3FNUZ).clone()
    unsat[x.abs() > 240] = 0x80
    assert _encode_mismatches(x, unsat, E4M3FNUZ)


def test_fnuz_never_writes_0x80_for_a_finite_value():
    neg = -torch.logspace(-45, 3, 4000, base=10.0)  # every magnitude, down through the values that round to -0
    got = host.encode(torch.cat([neg, torch.tensor([-0.0])]), E4M3FNUZ)
    assert not (got == 0x80).any()
    assert (got == 0).sum() > 10  # the ones that round to zero are +0
    # the fn encoder keeps -0: the same values are 0x80 there
    assert (host.encode(torch.tensor([-0.0, -1e-30]), E4M3FN) == 0x80).all()


def test_448_as_fn_reads_224_under_fnuz():
    b = host.encode(torch.tensor([448.0]), E4M3FN)
    assert host.decode(b, E4M3FNUZ).item() == 224.0 and host.decode(b, E4M3FN).item() == 448.0


def test_ocp_e5m2_every_byte_and_the_saturating_cast():
    b = torch.arange(256, dtype=torch.uint8)
    ref = b.view(torch.float8_e5m2).float()
    got = host.e5m2_decode(b)
    assert torch.equal(got.isnan(), ref.isnan()) and torch.equal(got[~ref.isnan()], ref[~ref.isnan()])
    fin = ref[ref.isfinite()].unique().sort().values
    mids = (fin[1:] + fin[:-1]) / 2
    x = torch.cat([fin, mids, torch.nextafter(mids, torch.tensor(math.inf)), torch.nextafter(mids, torch.tensor(-math.inf)),
                   torch.tensor([math.inf, -math.inf, 1e30, -7e4, 1e-30, -1e-30, -0.0]),
                   torch.randn(20000, generator=torch.Generator().manual_seed(2)) * 1e3])
    want = x.clamp(-57344.0, 57344.0).to(torch.float8_e5m2).view(torch.uint8)
    assert torch.equal(host.e5m2_encode(x), want)
    assert host.e5m2_encode(torch.tensor([math.nan])).item() & 0x7F == 0x7F


def test_ue8m0_ceil_finite_is_the_contracts_and_non_finite_stays_non_finite():
    s = torch.cat([torch.logspace(-30, 30, 5001, base=2.0), torch.tensor([1.0, 0.5, 3.0, 1.0000001, 2.0 ** -126, 0.75])])
    assert torch.equal(host.ue8m0_ceil(s), pow2_ceil(s))
    got = host.ue8m0_ceil(torch.tensor([math.inf, math.nan]))
    assert got[0].item() == math.inf and got[1].isnan()  # SPEC §10: never a finite stand-in


@pytest.mark.parametrize("case,args", _cases("act_quant"), ids=lambda v: v if isinstance(v, str) else "")
def test_act_quant_bit_exact_on_conformance_cases(case, args):
    y_ref, s_ref = REF["act_quant"](**args)
    y, s = host.act_quant(**args)
    assert y.dtype == y_ref.dtype
    assert torch.equal(y.view(torch.uint8), y_ref.contiguous().view(torch.uint8))
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0, equal_nan=True)  # bit-equal, NaN where the reference has it


def test_act_quant_non_finite_group_gets_non_finite_scale():
    x = torch.zeros(2, 256)
    x[0, 5], x[1, 200] = math.inf, math.nan
    _, s = host.act_quant(x, fmt="e4m3fnuz")
    assert s[0, 0].item() == math.inf and s[1, 1].isnan() and s[0, 1].isfinite() and s[1, 0].isfinite()


@pytest.mark.parametrize("case,args", _cases("mla_cache_pack"), ids=lambda v: v if isinstance(v, str) else "")
def test_mla_cache_pack_bit_exact_on_conformance_cases(case, args):
    ref = REF["mla_cache_pack"](**args)
    got = host.mla_cache_pack(**args)
    assert got.shape == ref.shape and torch.equal(got, ref)
    fmt = args.get("fmt", "e4m3fn")
    assert torch.equal(host.mla_cache_unpack(got, fmt), REF["mla_cache_unpack"](ref, fmt))


def test_topk_keys_order_is_torchs_sort_order():
    x = torch.cat([torch.randn(3000, generator=torch.Generator().manual_seed(1)) * 1e3,
                   torch.tensor([math.inf, -math.inf, math.nan, -math.nan, 0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38])])
    keys = host.topk_keys(x)
    by_key = x[torch.sort(keys, stable=True).indices]
    by_value = torch.sort(x, stable=True).values  # NaN last (largest), as torch.sort orders it
    assert torch.equal(by_key.isnan(), by_value.isnan())
    fin = ~by_value.isnan()
    assert torch.equal(by_key[fin], by_value[fin])
    assert keys[-6] == keys[-5]  # -0 and +0 share a key


def _selected_values(logits, idx):
    return sorted(float(logits[t, i]) if i >= 0 else float("-99") for t in range(idx.shape[0]) for i in idx[t].tolist())


@pytest.mark.parametrize("case,args", _cases("topk_select"), ids=lambda v: v if isinstance(v, str) else "")
def test_topk_select_radix_algorithm_on_conformance_cases(case, args):
    ref = REF["topk_select"](**args)
    got = host.topk_select(**args)
    logits = args["logits"].double()
    assert got.shape == ref.shape
    for t in range(ref.shape[0]):
        g, r = got[t], ref[t]
        assert sorted(g[g >= 0].tolist()) == sorted(set(g[g >= 0].tolist())), f"row {t}: an index twice"
        gv = sorted(logits[t, g[g >= 0].long()].tolist(), key=lambda v: (math.isnan(v), v))
        rv = sorted(logits[t, r[r >= 0].long()].tolist(), key=lambda v: (math.isnan(v), v))
        assert len(gv) == len(rv) and all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(gv, rv)), f"row {t}"


def test_softmax_merge_edges():
    ninf, nan = -math.inf, math.nan
    m = torch.tensor([[ninf, ninf], [ninf, 2.0], [1.0, 3.0], [nan, 0.0]])
    l = torch.tensor([[0.0, 0.0], [0.0, 5.0], [2.0, 4.0], [1.0, 1.0]])
    mo, lo, wa, wb = host.softmax_merge(m, l)
    assert mo[0].item() == ninf and lo[0].item() == 0 and wa[0].item() == 0 and wb[0].item() == 0  # empty stays empty, no NaN
    assert (mo[1].item(), lo[1].item(), wa[1].item(), wb[1].item()) == (2.0, 5.0, 0.0, 1.0)
    assert mo[2].item() == 3.0 and wb[2].item() == 1.0
    assert math.isclose(wa[2].item(), math.exp(-2.0), rel_tol=1e-6) and math.isclose(lo[2].item(), 2 * math.exp(-2) + 4, rel_tol=1e-6)
    assert mo[3].isnan() and lo[3].isnan()  # NaN in, NaN out


@pytest.mark.parametrize("case,args", [c for c in _cases("sparse_mla_prefill") if "ds-" not in c[0]],
                         ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("chunk", [64, 5])
def test_sparse_mla_chunked_online_softmax_on_conformance_cases(case, args, chunk):
    out_r, lse_r, max_r = REF["sparse_mla_prefill"](**args)
    a = dict(args)
    kv = a["kv"].clone()
    # SPEC §10: rows no index names may hold anything; NaN there must not reach the result
    named = a["indices"].flatten()
    unused = torch.ones(kv.shape[0], dtype=torch.bool)
    unused[named[(named >= 0) & (named < kv.shape[0])].long()] = False
    kv[unused] = math.nan
    out, lse, mx = host.sparse_mla_prefill(a["q"], kv, a["indices"], a["sm_scale"], a.get("d_v", 512), chunk=chunk)
    # NaN only where the reference has it (a NaN query or named row, SPEC §10), never from the poisoned rows
    assert torch.equal(torch.isinf(lse_r), torch.isinf(lse)) and torch.equal(lse_r.isnan(), lse.isnan())
    assert torch.equal(out_r.isnan(), out.isnan()) and torch.equal(max_r.isnan(), mx.isnan())
    fin = lse_r.isfinite()
    assert (lse[fin].double() - lse_r[fin]).abs().max().item() < 1e-4 if fin.any() else True
    assert torch.equal(max_r.isinf(), mx.isinf())
    ok = out_r.isfinite()
    peak = out_r[ok].abs().max().item() if ok.any() else 0.0
    assert (out.double()[ok] - out_r[ok]).abs().max().item() <= 1e-4 * max(peak, 1.0) if ok.any() else out.numel() == out_r.isnan().sum()
    assert (out[lse_r == -math.inf] == 0).all()


# ---- E8M0 block scales (e8m0.h: what dsp_fp8_gemm_e8m0 feeds gfx950's scaled MFMA) ----------
def test_e8m0_decode_every_byte_is_a_power_of_two():
    b = torch.arange(256, dtype=torch.uint8)
    got = host.e8m0_decode(b)
    want = torch.ldexp(torch.ones(256, dtype=torch.float64), b.long() - 127).float()  # 2^(b - 127), OCP MX
    assert got[255].isnan() and not got[:255].isnan().any()
    assert torch.equal(got[:255].view(torch.int32), want[:255].view(torch.int32))  # bit-exact, 2^-127 subnormal included
    assert got[0].item() == 2.0 ** -127 and got[127].item() == 1.0 and got[254].item() == 2.0 ** 127


def test_e8m0_encode_is_exact_or_refuses():
    p = torch.ldexp(torch.ones(255, dtype=torch.float64), torch.arange(-127, 128)).float()  # every E8M0 value
    assert torch.equal(host.e8m0_encode(p), torch.arange(255, dtype=torch.int32))
    none = 0x1FF
    bad = torch.tensor([0.0, -0.0, -1.0, 3.0, 1.5, 0.75, 2.0 ** -130, math.inf, -math.inf, math.nan,
                        torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)).item()])
    assert (host.e8m0_encode(bad) == none).all()  # no rounding: a non-power-of-two scale has no code
    # what act_quant(scale_fmt="ue8m0") writes always has one, and it decodes back to the same float
    s = pow2_ceil(torch.rand(4096) * 10.0 ** torch.randint(-20, 20, (4096,)).float() + 1e-30)
    code = host.e8m0_encode(s)
    assert (code != none).all() and torch.equal(host.e8m0_decode(code.to(torch.uint8)), s)


def test_mx_scale_indexing_repeats_each_128_block_over_its_four_32_blocks():
    gen = torch.Generator().manual_seed(5)
    m, n, k = 5, 300, 512  # n spans three 128-row weight blocks, the last one partial
    sa = torch.ldexp(torch.ones(m, k // 128), torch.randint(-10, 10, (m, k // 128), generator=gen))
    sb = torch.ldexp(torch.ones(-(-n // 128), k // 128), torch.randint(-10, 10, (-(-n // 128), k // 128), generator=gen))
    got_a, got_b = host.mx_scales(sa, sb, m, n, k)
    want_a = (torch.log2(sa).round().int() + 127).repeat_interleave(4, 1)            # [M, K/32]
    want_b = (torch.log2(sb).round().int() + 127).repeat_interleave(128, 0)[:n].repeat_interleave(4, 1)  # [N, K/32]
    assert torch.equal(got_a, want_a) and torch.equal(got_b, want_b)
