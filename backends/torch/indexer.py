"""Lightning-indexer logits (prefill and paged decode), the 132-byte key
cache, and the blocked indexer + top-k composite.

Logits are computed per query block, in tiles of key columns: a tile holds
[rows, H, cols] fp32 scores within the device's working set, so peak memory is
O(block * S) and :func:`indexer_topk` never holds [T, S]."""
from __future__ import annotations

import torch

from . import policy
from .topk import topk_window
from ...core.fp8 import UE8M0, Fp8Format, fp8_format

NEG_INF = float("-inf")


MIN_ROWS = 16
"""Fewest query rows a block holds: the score GEMM is [rows * H, D] x [D, cols], and below ~16 rows the
per-tile overhead (a few torch calls) outweighs the GEMM. Long contexts tile the key columns instead."""


def _tile_logits(q32: torch.Tensor, k32: torch.Tensor, w32: torch.Tensor, k_scale: torch.Tensor | None) -> torch.Tensor:
    """[b, c] = sum_h w[t, h] * relu(q[t, h] . k[s]) (* k_scale[s]) over the c keys of ``k32``."""
    # FP8 values widen to fp32 exactly; k_scale multiplies the head sum afterwards, as the FP8 kernels do
    scores = torch.matmul(q32, k32.t()).relu_()                        # [b, H, c], fp32 accumulation
    out = torch.bmm(w32.unsqueeze(1), scores).squeeze(1)              # head sum as a batched GEMV
    if k_scale is not None:
        out *= k_scale.float()
    return out


def _blocks(q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor, ks: torch.Tensor, ke: torch.Tensor,
            k_scale: torch.Tensor | None, block: int | None, out: torch.Tensor | None = None):
    """Yield (t0, t1, lo, logits [t1 - t0, hi - lo]) with columns outside each row's window at -inf.

    A block of rows covers the union [lo, hi) of its rows' windows (for causal rows, the keys the
    block's last row sees), computed in tiles of ``cols`` keys so the [rows, H, cols] fp32 scores,
    which three passes read, stay within the device's working set. With ``out`` [T, S] the tiles are
    written into it and the yielded logits are its views."""
    t, h, _ = q.shape
    s = k.shape[0]
    k32, w32 = k.float(), weights.float()                             # O(S) and O(T * H); q widens per block
    budget = policy.workset_bytes(q.device) // (4 * h)                # rows x cols of one score tile
    step = block or max(1, min(t, max(MIN_ROWS, budget // max(s, 1))))
    for t0 in range(0, t, step):  # a loop over query blocks, each a few large GEMMs
        t1 = min(t, t0 + step)
        bks, bke = ks[t0:t1], ke[t0:t1]
        lo, hi = int(bks.min()), int(bke.max())
        hi = max(hi, lo)
        inner_lo, inner_hi = int(bks.max()), int(bke.min())           # columns every row of the block sees
        lg = out[t0:t1, lo:hi] if out is not None else torch.empty(t1 - t0, hi - lo, device=q.device)
        q32 = q[t0:t1].float()
        cols = max(1, hi - lo if block else budget // (t1 - t0))      # an explicit block keeps whole-window tiles
        for c0 in range(lo, hi, cols):
            c1 = min(hi, c0 + cols)
            tile = _tile_logits(q32, k32[c0:c1], w32[t0:t1], None if k_scale is None else k_scale[c0:c1])
            if not (inner_lo <= c0 and c1 <= inner_hi):               # a tile inside every window needs no mask
                pos = torch.arange(c0, c1, device=q.device)
                tile.masked_fill_((pos[None, :] < bks[:, None]) | (pos[None, :] >= bke[:, None]), NEG_INF)
            lg[:, c0 - lo:c1 - lo] = tile
        yield t0, t1, lo, lg


def indexer_logits(q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor, ks: torch.Tensor, ke: torch.Tensor,
                   k_scale: torch.Tensor | None = None) -> torch.Tensor:
    t, s = q.shape[0], k.shape[0]
    out = torch.full((t, s), NEG_INF, dtype=torch.float32, device=q.device)
    for _ in _blocks(q, k, weights, ks, ke, k_scale, None, out):      # the tiles are written into out
        pass
    return out


def indexer_topk(q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor, ks: torch.Tensor, ke: torch.Tensor,
                 topk: int, k_scale: torch.Tensor | None = None, block: int | None = None) -> torch.Tensor:
    """indexer_logits followed by topk_select, one query block at a time:
    int32 [T, topk] with peak extra memory O(block * H * S), never O(T * S)."""
    out = torch.empty((q.shape[0], topk), dtype=torch.int32, device=q.device)
    for t0, t1, lo, lg in _blocks(q, k, weights, ks, ke, k_scale, block):
        out[t0:t1] = topk_window(lg, topk, ks[t0:t1], ke[t0:t1], col0=lo)
    return out


# -- the paged 132-byte key cache ----------------------------------------------------------------------

def index_cache_pack(k: torch.Tensor, fmt: str | Fp8Format = "e4m3fn") -> torch.Tensor:
    f = fp8_format(fmt, "index_cache_pack")
    nb, bs, d = k.shape
    g = k.float()
    s = UE8M0.scale(g.abs().amax(-1), f)                              # [NB, BS], one 128-group per token
    y = f.cast(g / s.unsqueeze(-1))
    flat = torch.cat((y.view(torch.uint8).reshape(nb, bs * d), s.contiguous().view(torch.uint8).reshape(nb, bs * 4)), 1)
    return flat.view(nb, bs, d + 4)


def _split_blocks(blocks: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., BS, 132] bytes of whole blocks -> (k fp8 [..., BS, 128], k_scale fp32 [..., BS])."""
    *lead, bs, w = blocks.shape
    flat = blocks.reshape(*lead, bs * w)
    kb = flat[..., : bs * 128].contiguous().view(dtype).reshape(*lead, bs, 128)
    sc = flat[..., bs * 128:].contiguous().view(torch.float32)
    return kb, sc


def index_cache_unpack(cache: torch.Tensor, fmt: str | Fp8Format = "e4m3fn") -> tuple[torch.Tensor, torch.Tensor]:
    kb, sc = _split_blocks(cache, fp8_format(fmt, "index_cache_unpack").dtype)
    # with one block the byte slices are already contiguous and come back as views of the cache: an
    # output must never alias an input (SPEC §10), so those are copied
    shared = cache.untyped_storage().data_ptr()
    return tuple(t.clone() if t.numel() and t.untyped_storage().data_ptr() == shared else t for t in (kb, sc))


def indexer_logits_paged(q: torch.Tensor, k_cache: torch.Tensor, weights: torch.Tensor, block_table: torch.Tensor,
                         seqlens: torch.Tensor) -> torch.Tensor:
    """Reads only the cache blocks named by block_table (never the whole pool),
    a few sequences at a time so the widened keys and [H, L] scores stay bounded."""
    b, h, d = q.shape
    nb, bs, _ = k_cache.shape
    mb = block_table.shape[1]
    out = torch.full((b, mb * bs), NEG_INF, dtype=torch.float32, device=q.device)
    if b == 0 or mb == 0 or nb == 0:
        return out
    pos = torch.arange(mb * bs, device=q.device)
    step = policy.rows_per_block(mb * bs * (4 * h + 4 * d + k_cache.shape[-1]), q.device)
    for b0 in range(0, b, step):
        bt = block_table[b0:b0 + step]
        n = bt.shape[0]
        kb, sc = _split_blocks(k_cache.index_select(0, bt.clamp(min=0).reshape(-1)).view(n, mb, bs, -1), q.dtype)
        keys = kb.reshape(n, mb * bs, d).float()                                  # fp8 widens exactly
        scores = torch.matmul(q[b0:b0 + n].float(), keys.transpose(1, 2)).relu_()  # [n, H, L]
        lg = torch.bmm(weights[b0:b0 + n].float().unsqueeze(1), scores).squeeze(1) * sc.reshape(n, mb * bs)
        valid = (pos[None, :] < seqlens[b0:b0 + n, None]) & (bt >= 0).repeat_interleave(bs, 1)
        out[b0:b0 + n] = torch.where(valid, lg, out[b0:b0 + n])
    return out
