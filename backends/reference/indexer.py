"""Reference lightning indexer (SPEC §4), its decode variant over the paged
FP8 key cache, and the cache's byte layout.

The float path computes the unquantized formula; with FP8 q and k the same
formula runs on the exact values of the FP8 codes times k_scale, which is the
"quant-mimicking" reference FP8 kernels are checked against tightly.
:func:`quantize_indexer_inputs` turns float q, k, weights into those FP8
arguments the way the release does (act_quant, ue8m0, q's scale folded into
the weights)."""
from __future__ import annotations

import torch

from .quant import act_quant
from ...core.constants import DEEPSEEK_V32
from ...core.errors import ValidationError
from ...core.fp8 import Fp8Format, fp8_format

KEY_DIM = 128
"""Bytes of FP8 key per token in the paged cache; 4 more hold its fp32 scale."""


def indexer_logits(q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor, ks: torch.Tensor, ke: torch.Tensor,
                   k_scale: torch.Tensor | None = None) -> torch.Tensor:
    """I[t, s] = k_scale[s] * sum_h weights[t, h] * relu(q[t, h] . k[s]) for
    ks[t] <= s < ke[t], -inf elsewhere. NaN inputs give NaN inside the window
    (relu keeps NaN): reported, never masked."""
    t_len, n_heads, _ = q.shape
    s_len = k.shape[0]
    q64, k64, w64 = q.double(), k.double(), weights.double()
    score = torch.zeros(t_len, s_len, dtype=torch.float64)
    for h in range(n_heads):  # one head at a time keeps memory at T*S instead of T*H*S
        score += w64[:, h, None] * torch.relu(q64[:, h] @ k64.T)
    if k_scale is not None:
        score = score * k_scale.double()[None, :]
    pos = torch.arange(s_len)
    inside = (pos[None, :] >= ks.long()[:, None]) & (pos[None, :] < ke.long()[:, None])
    return torch.where(inside, score, torch.full_like(score, float("-inf")))


def indexer_weights(w_proj_out: torch.Tensor, n_heads: int = DEEPSEEK_V32.index_n_heads,
                    head_dim: int = DEEPSEEK_V32.index_head_dim) -> torch.Tensor:
    """weights_proj(x) * n_heads^-0.5 * head_dim^-0.5 in float32, as the
    release folds them. ``n_heads`` is the model's index_n_heads (64) even
    when ``w_proj_out`` holds only this rank's share of the heads."""
    return w_proj_out.float() * n_heads ** -0.5 * head_dim ** -0.5


def quantize_indexer_inputs(q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor,
                            fmt: str | Fp8Format = "e4m3fn") -> dict[str, torch.Tensor]:
    """The FP8 arguments of :func:`indexer_logits` for float q [T, H, D],
    k [S, D] and folded weights [T, H]: act_quant with ue8m0 scales over each
    whole (t, h) query vector and each key; q's scale folded into the weights
    in float32 (exact, being a power of two). Returns q, k, weights, k_scale."""
    f = fp8_format(fmt, "quantize_indexer_inputs")
    _check_float_inputs(q, k, weights)
    d = q.shape[-1]
    q8, q_scale = act_quant(q, block=d, fmt=f, scale_fmt="ue8m0")  # q_scale [T, H, 1]
    k8, k_scale = act_quant(k, block=d, fmt=f, scale_fmt="ue8m0")  # k_scale [S, 1]
    return {"q": q8, "k": k8, "weights": weights.float() * q_scale[..., 0], "k_scale": k_scale[..., 0]}


def _check_float_inputs(q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor) -> None:
    """Shapes and dtypes quantize_indexer_inputs needs; nothing is broadcast."""
    op = "quantize_indexer_inputs"
    for name, t, rank in (("q", q, 3), ("k", k, 2), ("weights", weights, 2)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.element_size() < 2:
            raise ValidationError(op, name, "a float16/bfloat16/float32/float64 tensor",
                                  getattr(t, "dtype", type(t).__name__))
        if t.dim() != rank:
            raise ValidationError(op, name, f"rank {rank}", f"shape {tuple(t.shape)}")
    if k.shape[1] != q.shape[2]:
        raise ValidationError(op, "k", f"shape [S, D] with D = {q.shape[2]} (as q)", tuple(k.shape))
    if tuple(weights.shape) != tuple(q.shape[:2]):
        raise ValidationError(op, "weights", f"shape [T, H] = {tuple(q.shape[:2])} (as q)", tuple(weights.shape))


def index_cache_pack(k: torch.Tensor, fmt: str | Fp8Format = "e4m3fn") -> torch.Tensor:
    """Quantize each 128-dim key with one ue8m0 scale and lay every block out
    as BS*128 FP8 bytes followed by BS little-endian fp32 scales (DeepGEMM's
    paged key cache). The [NB, BS, 132] shape is only a byte budget: token j's
    bytes are NOT row j of it."""
    f = fp8_format(fmt, "index_cache_pack")
    nb, bs, _ = k.shape
    k8, scale = act_quant(k, block=KEY_DIM, fmt=f, scale_fmt="ue8m0")
    data = k8.reshape(nb, bs * KEY_DIM).view(torch.uint8)
    scales = scale.reshape(nb, bs).contiguous().view(torch.uint8)  # [NB, BS * 4]
    return torch.cat([data, scales], dim=1).reshape(nb, bs, KEY_DIM + 4)


def index_cache_unpack(cache: torch.Tensor, fmt: str | Fp8Format = "e4m3fn") -> tuple[torch.Tensor, torch.Tensor]:
    """Bytes -> (k FP8 [NB, BS, 128], k_scale fp32 [NB, BS]), bit-exact."""
    f = fp8_format(fmt, "index_cache_unpack")
    nb, bs, _ = cache.shape
    flat = cache.reshape(nb, bs * (KEY_DIM + 4))
    # clone: with one block the slices are contiguous views of the cache, and an output never aliases an input
    k8 = flat[:, : bs * KEY_DIM].clone().view(f.dtype).reshape(nb, bs, KEY_DIM)
    scale = flat[:, bs * KEY_DIM:].clone().view(torch.float32).reshape(nb, bs)
    return k8, scale


def indexer_logits_paged(q: torch.Tensor, k_cache: torch.Tensor, weights: torch.Tensor, block_table: torch.Tensor,
                         seqlens: torch.Tensor) -> torch.Tensor:
    """Decode: logical position p of sequence b lives in block
    block_table[b, p // BS] at offset p % BS; logits[b, p] is the indexer
    score of q[b] against that key for p < seqlens[b], -inf beyond. The cache
    holds keys in q's FP8 format."""
    k8, k_scale = index_cache_unpack(k_cache, fp8_format(q.dtype, "indexer_logits_paged", "q"))
    n_seq, max_blocks = block_table.shape
    bs = k_cache.shape[1]
    out = torch.full((n_seq, max_blocks * bs), float("-inf"), dtype=torch.float64)
    for b in range(n_seq):
        n = int(seqlens[b])
        pos = torch.arange(n)
        blocks, offsets = block_table[b, pos // bs].long(), pos % bs
        window = torch.tensor([0], dtype=torch.int32), torch.tensor([n], dtype=torch.int32)
        out[b, :n] = indexer_logits(q[b: b + 1], k8[blocks, offsets], weights[b: b + 1], *window,
                                    k_scale=k_scale[blocks, offsets])[0]
    return out
