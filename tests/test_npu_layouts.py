"""Layout translation between dsport and the Ascend kernels, each op checked
exactly in both directions against values built independently of it."""
import pytest
import torch

from dsport.backends.reference.mla_cache import mla_cache_pack, mla_cache_unpack
from dsport.core.errors import ValidationError
from dsport.core.ops.cache import fp8_cache_bytes
from dsport.npu_kernels import layouts as L


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
def test_split_cache_is_the_dequantized_cache_exactly(fmt):
    cache = fp8_cache_bytes(_gen(), 40, fmt)
    nope, rope = L.split_mla_cache(cache, fmt)
    assert nope.dtype == rope.dtype == torch.bfloat16 and nope.shape == (40, 512) and rope.shape == (40, 64)
    # the reference unpack is float32; bf16 holds every fp8 * 2^e value, so the two agree bit for bit
    ref = mla_cache_unpack(cache, fmt)
    assert torch.equal(nope.float(), ref[:, :512]) and torch.equal(rope.float(), ref[:, 512:])
    assert torch.equal(rope.view(torch.uint8), cache[:, 528:])  # the rope bytes are copied, not converted


@pytest.mark.parametrize("fmt", ["e4m3fn", "e4m3fnuz"])
def test_join_is_the_reference_packer_byte_for_byte(fmt):
    kv = torch.randn(33, 576, generator=_gen(1)).bfloat16()
    kv[0, :128] = 0.0  # a zero tile: the amax floor sets its scale
    joined = L.join_mla_cache(kv[:, :512], kv[:, 512:], fmt)
    assert torch.equal(joined, mla_cache_pack(kv, fmt))


def test_split_then_join_round_trip():
    # values always come back exactly; bytes too, except a tile whose largest code is exactly fmax/2:
    # ue8m0 then picks the half scale (and doubled codes), the same values in other bytes
    kv = torch.randn(64, 576, generator=_gen(2)).bfloat16()
    cache = mla_cache_pack(kv, "e4m3fn")
    again = L.join_mla_cache(*L.split_mla_cache(cache))
    assert all(torch.equal(a, b) for a, b in zip(L.split_mla_cache(again), L.split_mla_cache(cache)))
    top = cache[:, :512].view(torch.float8_e4m3fn).float().abs().reshape(64, 4, 128).amax(-1)
    moved = again[:, 512:528].view(torch.float32) != cache[:, 512:528].view(torch.float32)
    assert moved.any() and torch.equal(moved, top == 224.0)  # this seed has such tiles: the rule is exercised
    same = ~moved.any(-1)
    assert torch.equal(again[same], cache[same])


def test_cache_shape_errors_name_the_argument():
    with pytest.raises(ValidationError, match="split_mla_cache.*cache.*656"):
        L.split_mla_cache(torch.zeros(2, 576, dtype=torch.uint8))
    with pytest.raises(ValidationError, match="join_mla_cache"):
        L.join_mla_cache(torch.zeros(2, 512), torch.zeros(3, 64))


def test_valid_first_moves_valid_entries_forward_in_order():
    idx = torch.tensor([[-1, 5, -1, 2, 9, -1], [-1, -1, -1, -1, -1, -1], [0, 1, 2, 3, 4, 5], [7, 12, -1, 3, 20, 1]],
                       dtype=torch.int32)
    rows, valid = L.valid_first(idx, limit=10)
    assert rows.tolist() == [[5, 2, 9, -1, -1, -1], [-1] * 6, [0, 1, 2, 3, 4, 5], [7, 3, 1, -1, -1, -1]]
    assert valid.tolist() == [3, 0, 6, 3]  # 12 and 20 are >= limit: invalid in dsport's prefill
    assert bool(L.is_valid_first(rows).all()) and not bool(L.is_valid_first(idx).all())
    # back: valid-first rows are dsport rows as they are; a row that breaks the NPU's rule is refused
    assert torch.equal(L.from_valid_first(rows), rows)
    with pytest.raises(ValidationError, match="valid entries first"):
        L.from_valid_first(idx)


def test_valid_first_keeps_the_multiset_on_random_rows():
    g = _gen(3)
    idx = torch.randint(-1, 50, (64, 32), generator=g).int()
    idx[torch.rand(64, 32, generator=g) < 0.4] = -1
    rows, valid = L.valid_first(idx)
    for a, b, n in zip(idx, rows, valid):
        assert sorted(a[a >= 0].tolist()) == sorted(b[:n].tolist()) and (b[n:] == -1).all()
        assert b[:n].tolist() == a[a >= 0].tolist()  # stable: the order of valid entries is kept


def test_prefix_sums_both_ways():
    lengths = torch.tensor([3, 0, 5, 1], dtype=torch.int32)
    sums = L.lengths_to_prefix_sums(lengths)
    assert sums.tolist() == [3, 3, 8, 9] and sums.dtype == torch.int32
    assert torch.equal(L.prefix_sums_to_lengths(sums), lengths)
    with pytest.raises(ValidationError, match="non-decreasing"):
        L.prefix_sums_to_lengths(torch.tensor([3, 2]))
    with pytest.raises(ValidationError, match="counts >= 0"):
        L.lengths_to_prefix_sums(torch.tensor([1, -1]))


def test_softmax_stats_to_lse_natural_log_and_head_order():
    g = _gen(4)
    scores = torch.randn(5, 8, 7, generator=g, dtype=torch.float64)  # [T1, N1, keys]
    mx = scores.amax(-1)
    ssum = torch.exp(scores - mx[..., None]).sum(-1)
    # the NPU's (N2, T1, N1/N2) with N2 = 2 KV heads: query head h = n2 * 4 + g
    m = mx.reshape(5, 2, 4).permute(1, 0, 2).float()
    s = ssum.reshape(5, 2, 4).permute(1, 0, 2).float()
    lse = L.stats_to_lse(m, s)
    torch.testing.assert_close(lse.double(), torch.logsumexp(scores, -1), rtol=0, atol=1e-5)
    m2, s2 = L.lse_to_stats(lse, n2=2)
    assert torch.equal(L.stats_to_lse(m2, s2), lse)
    empty = L.stats_to_lse(torch.full((1, 2, 3), float("nan")), torch.zeros(1, 2, 3))
    assert bool(torch.isneginf(empty).all())


def test_right_down_causal_is_dsport_causal_prefill():
    # dsport causal prefill after a prefix P: ke[t] = P + t + 1 over S = P + T keys
    ends = L.right_down_causal_ends(4, 10)
    assert ends.tolist() == [7, 8, 9, 10]
    mask = torch.arange(10)[None, :] < ends[:, None]
    assert torch.equal(mask, torch.ones(4, 10, dtype=torch.bool).tril(10 - 4))
    zeros = torch.zeros(4, dtype=torch.int32)
    assert L.as_sparse_mode(zeros, ends, 10) == L.RIGHT_DOWN_CAUSAL
    assert L.as_sparse_mode(zeros, torch.full((4,), 10), 10) == L.NO_MASK
    assert L.as_sparse_mode(zeros, torch.tensor([3, 1, 4, 1]), 10) is None
    assert L.as_sparse_mode(torch.tensor([0, 1, 0, 0]), ends, 10) is None
    assert L.right_down_causal_ends(5, 3).tolist() == [0, 0, 1, 2, 3]  # more queries than keys: leading rows see nothing
