"""The CUDA kernels' scalar building blocks (cuda_kernels/include/dsport/*.cuh),
compiled by g++ and held against the reference on the conformance cases:
bit-exact for FP8 codecs, scales, act_quant, the 656-byte cache row and the
top-k selection set; within fp32 bounds for the online-softmax merge. Thread
mapping, shared memory and wgmma fragments are not checked here: they run
only on a GPU."""
import math

import numpy as np
import pytest
import torch

from dsport.backends import reference as R
from dsport.core.build import ToolchainMissing
from dsport.core.spec import specs

hostlib = pytest.importorskip("dsport.backends.cuda.hostlib")


@pytest.fixture(scope="module", autouse=True)
def _lib():
    try:
        hostlib.library()
    except ToolchainMissing as e:
        pytest.skip(f"host check library not buildable here: {e}")


def _cases(op):
    return [pytest.param(c, id=c.id) for c in specs()[op].cases()]


def _nan_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


SPECIALS = [0.0, -0.0, float("nan"), -float("nan"), float("inf"), -float("inf"), 1e-30, -1e-30, 448, 449, 464, 465,
            240, 247.9, 248, 2 ** -9, 2 ** -10, 1.5 * 2 ** -10, -2 ** -11]


@pytest.mark.parametrize("fmt, dtype, fmax", [("e4m3fn", torch.float8_e4m3fn, 448.0), ("e4m3fnuz", torch.float8_e4m3fnuz, 240.0)])
def test_fp8_codec_is_torchs_saturating_cast_bit_for_bit(fmt, dtype, fmax):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(50000, generator=g) * 100, torch.randn(50000, generator=g) * 1e-2, torch.tensor(SPECIALS)])
    want = x.clamp(-fmax, fmax).to(dtype).view(torch.uint8)
    got = hostlib.fp8_encode(x, fmt)
    assert torch.equal(got, want), x[got != want][:8]
    every = torch.arange(256, dtype=torch.uint8)
    assert _nan_equal(hostlib.fp8_decode(every, fmt), every.view(dtype).float())


def test_bf16_rounding_is_torchs():
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(100000, generator=g) * 1e3, torch.tensor(SPECIALS, dtype=torch.float32)])
    assert _nan_equal(hostlib.bf16_round(x), x.to(torch.bfloat16).float())


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
def test_a_dequantized_cache_element_is_exact_in_bf16(fmt):
    # sparse_mla.cu stages dequantized rows as bf16: exact only because the 656-byte row's tile
    # scales are powers of two (ue8m0) and e4m3 has 3 mantissa bits
    vals = hostlib.fp8_decode(torch.arange(256, dtype=torch.uint8), fmt)
    vals = vals[vals.isfinite()]
    for e in range(-30, 12):
        prod = vals * 2.0 ** e
        assert torch.equal(hostlib.bf16_round(prod), prod)
    assert not torch.equal(hostlib.bf16_round(vals * 0.3), vals * 0.3)  # an fp32 (non-power-of-two) scale is not


def test_e4m3fnuz_never_writes_negative_zero():
    tiny_negatives = -torch.tensor([0.0, 1e-30, 2.0 ** -12, 2.0 ** -11])  # all round to zero in e4m3fnuz
    assert hostlib.fp8_encode(tiny_negatives, "e4m3fnuz").tolist() == [0, 0, 0, 0]
    assert hostlib.fp8_encode(torch.tensor([float("nan")]), "e4m3fnuz").tolist() == [0x80]


@pytest.mark.parametrize("case", _cases("act_quant"))
def test_act_quant_groups_bit_exact_on_conformance_cases(case):
    a = case.inputs()
    y, s = R.OPS["act_quant"](**a)
    hy, hs = hostlib.act_quant(a["x"], a.get("block", 128), str(a.get("fmt", "e4m3fn")), str(a.get("scale_fmt", "ue8m0")))
    assert torch.equal(hy, y.contiguous().view(torch.uint8)) and _nan_equal(hs, s.float())


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
@pytest.mark.parametrize("scale_fmt", ["ue8m0", "fp32"])
def test_non_finite_amax_gives_a_non_finite_scale(fmt, scale_fmt):
    x = torch.randn(4, 256)
    x[0, 3], x[1, 130], x[2, 5] = float("inf"), float("nan"), -float("inf")
    x[3, :128] = 0.0
    _, s = R.OPS["act_quant"](x, 128, fmt, scale_fmt)
    hy, hs = hostlib.act_quant(x, 128, fmt, scale_fmt)
    assert _nan_equal(hs, s.float())
    assert math.isinf(hs[0, 0]) and math.isnan(hs[1, 1]) and math.isinf(hs[2, 0])
    assert hs[3, 0] == (2.0 ** math.ceil(math.log2(1e-4 / (448 if fmt == "e4m3fn" else 240))) if scale_fmt == "ue8m0"
                        else torch.tensor(1e-4, dtype=torch.float32) / (448 if fmt == "e4m3fn" else 240))


@pytest.mark.parametrize("case", _cases("mla_cache_pack"))
def test_656_byte_cache_row_bit_exact(case):
    a = case.inputs()
    fmt = str(a.get("fmt", "e4m3fn"))
    want = R.OPS["mla_cache_pack"](**a)
    got = hostlib.mla_cache_pack(a["kv"], fmt)
    assert torch.equal(got, want)
    assert _nan_equal(hostlib.mla_cache_unpack(got, fmt), R.OPS["mla_cache_unpack"](want, fmt))


@pytest.mark.parametrize("case", _cases("topk_select"))
def test_radix_selection_is_the_reference_set_with_its_tie_rule(case):
    a = case.inputs()
    want = R.OPS["topk_select"](**a)
    got = hostlib.topk_select(a["logits"], a["k"], a.get("ks"), a.get("ke"))
    # the same tie rule (lower index wins) makes the index SET equal, not only the value multiset
    assert torch.equal(got.sort(-1).values, want.sort(-1).values)


def test_radix_key_orders_nan_above_inf_and_zero_signs_together():
    logits = torch.tensor([[0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1.0, -1.0]])
    assert hostlib.topk_select(logits, 2).tolist() == [[2, 3]]
    assert sorted(hostlib.topk_select(logits, 4)[0].tolist()) == [0, 2, 3, 5]  # +0 (index 0) and -0 (index 1) tie: the lower index wins
    signed_first = torch.tensor([[-0.0, 0.0, 1.0]])  # -0 at the lower index must win the tie with +0
    assert sorted(hostlib.topk_select(signed_first, 2)[0].tolist()) == sorted(R.OPS["topk_select"](signed_first, 2)[0].tolist()) == [0, 2]


def _prefill_rows(cid):
    """Per (token, head) of a sparse prefill case: the scores and value rows a kernel sees, with NaN in
    every masked slot (SPEC §10: what masked slots hold must not matter; the kernels stage zeros there),
    and the reference's out, lse and max_logits."""
    a = next(c for c in specs()["sparse_mla_prefill"].cases() if c.id == cid).inputs()
    out, lse, mx = R.OPS["sparse_mla_prefill"](**a)
    q, kv, idx, sm = a["q"].double(), a["kv"][:, 0].double(), a["indices"][:, 0], a["sm_scale"]
    for t in range(q.shape[0]):
        valid = idx[t] >= 0
        rows = kv[idx[t].clamp_min(0).long()]
        v = rows[:, :a.get("d_v", 512)].clone()
        v[~valid] = float("nan")
        for h in range(q.shape[1]):
            scores = (rows @ q[t, h]) * sm
            scores[~valid] = float("nan")
            yield scores, valid, v, out[t, h], float(lse[t, h]), float(mx[t, h])


@pytest.mark.parametrize("tile", [32, 64])  # the decode kernel's key tile, and a second size: the merge must not care
@pytest.mark.parametrize("cid", ["tiny", "rows-all-invalid", "all-invalid", "duplicates", "S-lt-k", "heads-8"])
def test_online_softmax_merge_against_the_reference(cid, tile):
    for scores, valid, v, ref, lse, mx in _prefill_rows(cid):
        o, l, m = hostlib.sparse_attn_row(scores, valid, v, tile=tile)
        if math.isinf(lse):
            assert l == -math.inf and m == -math.inf and torch.equal(o, torch.zeros_like(o))
            continue
        # fp32 exp2/log2 over <= 2048 terms: lse within 1e-5 absolute, out within 1e-5 of the row's peak
        assert abs(l - lse) < 1e-5 and abs(m - mx) < 1e-5
        peak = ref.abs().max().item() or 1.0
        assert (o.double() - ref).abs().max().item() <= 1e-5 * peak


# -- the wgmma sparse MLA kernel (sparse_mla_wgmma.cu): tile arithmetic and its softmax step ----------------
def _k_major(mn, k, lbo, sbo):
    """PTX ISA matrix descriptor, no swizzle, 16-bit elements: a core matrix is 8 M/N-rows of 16 bytes
    along K; LBO steps between core matrices along K, SBO along M/N."""
    return (mn // 8) * sbo + (k // 8) * lbo + (mn % 8) * 16 + (k % 8) * 2


def _mn_major(mn, k, lbo, sbo):
    """The same for an MN-major operand: a core matrix is 8 K-rows of 16 bytes along M/N."""
    return (mn // 8) * sbo + (k // 8) * lbo + (k % 8) * 16 + (mn % 8) * 2


def _grid(a, b):
    return np.meshgrid(np.arange(a), np.arange(b), indexing="ij")


QK_ROW, P_ROW = 576 * 2, 64 * 2


@pytest.mark.parametrize("operand, wg_count, steps", [("q", 1, 36), ("keys", 2, 36), ("p", 1, 4), ("values", 2, 4)])
def test_wgmma_descriptors_address_the_elements_the_math_needs(operand, wg_count, steps):
    # for every wgmma of the kernel: the byte the descriptor makes the tensor core read for operand
    # element (mn, k) must be the byte where the kernel stored the element the product needs there
    for wg in range(wg_count):
        for ks in range(steps):
            start, lbo, sbo = hostlib.wg_desc(operand, wg, ks)
            assert start % 16 == 0 and lbo % 16 == 0 and sbo % 16 == 0 and 0 < lbo >> 4 < 2 ** 14 and 0 < sbo >> 4 < 2 ** 14
            if operand == "q":  # A of S = Q K^T: (head, dim 16 ks + k)
                mn, k = _grid(64, 16)
                rows, kbytes, row_bytes, model = mn, 2 * (16 * ks + k), QK_ROW, _k_major
            elif operand == "keys":  # B of S: (key 32 wg + n, dim 16 ks + k)
                mn, k = _grid(32, 16)
                rows, kbytes, row_bytes, model = 32 * wg + mn, 2 * (16 * ks + k), QK_ROW, _k_major
            elif operand == "p":  # A of O = P V: (head, key 16 ks + k)
                mn, k = _grid(64, 16)
                rows, kbytes, row_bytes, model = mn, 2 * (16 * ks + k), P_ROW, _k_major
            else:  # B of O: (value dim 256 wg + n, key 16 ks + k), stored as key rows
                mn, k = _grid(256, 16)
                rows, kbytes, row_bytes, model = 16 * ks + k, 2 * (256 * wg + mn), QK_ROW, _mn_major
            stored = hostlib.wg_tile_offsets(rows.ravel(), kbytes.ravel(), row_bytes)
            read = start + model(mn.ravel(), k.ravel(), lbo, sbo)
            assert np.array_equal(stored, read), f"{operand} wg {wg} step {ks}: {np.flatnonzero(stored != read)[:4]}"


@pytest.mark.parametrize("rows, row_bytes", [(64, QK_ROW), (64, P_ROW)])
def test_wgmma_tile_layout_gives_every_element_its_own_bytes(rows, row_bytes):
    r, kb = _grid(rows, row_bytes // 2)
    off = hostlib.wg_tile_offsets(r.ravel(), 2 * kb.ravel(), row_bytes)
    assert len(np.unique(off)) == off.size and off.min() == 0 and off.max() == rows * row_bytes - 2 and (off % 2 == 0).all()


def test_wgmma_descriptor_bits():
    assert hostlib.wg_desc_bits(0x1230, 128, 9216) == (0x1230 >> 4) | (8 << 16) | (576 << 32)
    assert hostlib.wg_desc_bits(0x3FFF0, 16, 16) == 0x3FFF | (1 << 16) | (1 << 32)  # 18-bit shared address, 14-bit fields


@pytest.mark.parametrize("regs", [16, 128])  # S (m64n32) and O (m64n256)
def test_wgmma_accumulator_fragment_covers_each_element_once(regs):
    rows, cols = hostlib.wg_acc_map(regs)
    n = 2 * regs
    cells = rows.astype(np.int64) * n + cols
    assert rows.min() == 0 and rows.max() == 63 and cols.min() == 0 and cols.max() == n - 1
    assert len(np.unique(cells)) == 64 * n  # a bijection onto the 64 x N tile
    # spot values of the PTX ISA's wgmma D fragment figure: thread, register -> (row, col)
    assert (rows[0, 0], cols[0, 0]) == (0, 0) and (rows[0, 1], cols[0, 1]) == (0, 1) and (rows[0, 2], cols[0, 2]) == (8, 0)
    assert (rows[1, 0], cols[1, 0]) == (0, 2) and (rows[4, 0], cols[4, 0]) == (1, 0) and (rows[32, 0], cols[32, 0]) == (16, 0)
    assert (rows[0, 4], cols[0, 4]) == (0, 8)


def test_wgmma_shared_memory_budget():
    from dsport.backends.cuda.kernels import KERNEL_FILES, SPARSE_WGMMA_SMEM
    regions, total = hostlib.wg_smem()
    order = list(regions.values())
    assert order == sorted(order) and regions["q"] == 0
    assert regions["keys"] - regions["q"] == 64 * QK_ROW and regions["p"] - regions["keys"] == 64 * QK_ROW
    assert all(regions[k] % 128 == 0 for k in ("q", "keys", "p")) and regions["where"] % 8 == 0
    assert total == SPARSE_WGMMA_SMEM == next(f for f in KERNEL_FILES if f.source == "sparse_mla_wgmma.cu").dynamic_smem
    h200 = 227 * 1024
    assert total + 64 * QK_ROW <= h200  # fits, and so would a second key tile (double buffering, the next step)


@pytest.mark.parametrize("cid", ["rows-all-invalid", "all-invalid", "duplicates", "S-lt-k", "heads-8", "small"])
def test_wgmma_softmax_step_against_the_reference(cid):
    # the tensor-core kernel's tile step: new max first, P rounded to bf16 for P.V (fp32 for the sum)
    for scores, valid, v, ref, lse, mx in _prefill_rows(cid):
        vmax = v[valid].abs().max().item() if valid.any() else 0.0
        o, l, m = hostlib.sparse_attn_row(scores, valid, v, tile=64, wgmma=True)
        if math.isinf(lse):
            assert l == -math.inf and m == -math.inf and torch.equal(o, torch.zeros_like(o))
            continue
        assert abs(l - lse) < 1e-5 and abs(m - mx) < 1e-5
        # a bf16 P has relative error <= 2^-9 per term, so |o - ref| <= 2^-9 max|v| (+ fp32 rounding)
        assert (o.double() - ref).abs().max().item() <= 2 ** -9 * vmax + 1e-5 * (vmax or 1.0)
