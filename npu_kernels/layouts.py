"""Layout translation between dsport's conventions and the Ascend kernels'.

Each function is an op of its own, pure torch, with its inverse next to it;
``tests/test_npu_layouts.py`` checks every pair both ways. Sources of the
Ascend side: the READMEs of ``sparse_flash_attention`` and
``lightning_indexer`` under vllm-ascend ``csrc/attention/`` and the calls in
``vllm_ascend/device/device_op.py`` / ``attention/context_parallel/sfa_cp.py``.

* MLA cache: dsport's decode cache is 656 bytes per token (512 fp8 latent in
  four 128-tiles, 4 fp32 ue8m0 scales, 64 bf16 rope; SPEC §6). Ascend's
  ``npu_sparse_flash_attention`` reads a *split* cache: ``key`` bf16
  [.., 512] (also passed as ``value``) and ``key_rope`` bf16 [.., 64]
  (README: "query中的D和key、value的D值相等为512，query_rope中的Dr和key_rope的
  Dr值相等为64").
* Indices: dsport allows -1 anywhere in a row (and, for prefill, any index
  >= S is invalid too). The NPU requires "每行有效值均在前半部分，无效值均在后半部分"
  (valid entries first, invalid after), the sentinel being -1 (its kernel
  tests ``sparseIndices == -1``).
* Lengths: in the TND layout ``actual_seq_lengths_*`` are prefix sums
  ("前缀和"), one entry per batch; in BSND / PA_BSND they are plain lengths.
* Softmax statistics: with ``return_softmax_lse`` the kernel returns
  ``softmax_max`` and ``softmax_sum`` of shape (N2, T1, N1/N2) for TND
  queries, not an lse; lse = max + ln(sum) (natural log, as vllm-ascend's
  ``sfa_cp.py`` combines them: ``softmax_max + torch.log(softmax_sum)``).
* ``sparse_mode`` 3 ("rightDownCausal"): query i of S1 sees keys j <= i + S2 - S1.
"""
from __future__ import annotations

import torch

from ..core.errors import ValidationError
from ..core.fp8 import SCALE_FORMATS, fp8_format, quantize_groups

LATENT, ROPE, TILE = 512, 64, 128
WIDTH = LATENT + 4 * (LATENT // TILE) + 2 * ROPE  # 656
SENTINEL = -1  # the NPU's invalid index, at the end of each row
RIGHT_DOWN_CAUSAL, NO_MASK = 3, 0  # sparse_mode values (README "sparse_mode为3时，代表rightDownCausal")


# -- 656-byte FP8 cache <-> split bf16 nope / rope cache ----------------------------------------------------------
def split_mla_cache(cache: torch.Tensor, fmt: str = "e4m3fn") -> tuple[torch.Tensor, torch.Tensor]:
    """[..., 656] uint8 -> (nope bf16 [..., 512], rope bf16 [..., 64]).

    The latent dequantizes as fp8 * tile scale. Exact in bf16 for caches with
    ue8m0 scales (an e4m3 value has 4 significant bits, bf16 keeps 8, and a
    power-of-two scale only moves the exponent); the rope bytes are copied."""
    if cache.dtype != torch.uint8 or cache.shape[-1] != WIDTH:
        raise ValidationError("split_mla_cache", "cache", f"uint8 [..., {WIDTH}]", f"{cache.dtype} {list(cache.shape)}")
    f = fp8_format(fmt, "split_mla_cache")
    c = cache.contiguous()
    latent = c[..., :LATENT].view(f.dtype).float()
    scales = c[..., LATENT:LATENT + 16].contiguous().view(torch.float32)
    nope = (latent.reshape(*latent.shape[:-1], 4, TILE) * scales.unsqueeze(-1)).reshape(latent.shape)
    rope = c[..., LATENT + 16:].contiguous().view(torch.bfloat16)
    return nope.to(torch.bfloat16), rope


def join_mla_cache(nope: torch.Tensor, rope: torch.Tensor, fmt: str = "e4m3fn") -> torch.Tensor:
    """Inverse of :func:`split_mla_cache`: (nope [..., 512], rope [..., 64]) -> [..., 656] uint8,
    quantizing the latent per 128-tile with ue8m0 scales exactly as ``mla_cache_pack`` does."""
    if nope.shape[-1] != LATENT or rope.shape[-1] != ROPE or nope.shape[:-1] != rope.shape[:-1]:
        raise ValidationError("join_mla_cache", "nope/rope", f"[..., {LATENT}] and [..., {ROPE}] with equal leading dims",
                              f"{list(nope.shape)} and {list(rope.shape)}")
    f = fp8_format(fmt, "join_mla_cache")
    y, s = quantize_groups(nope, TILE, f, SCALE_FORMATS["ue8m0"])
    return torch.cat([y.contiguous().view(torch.uint8), s.contiguous().view(torch.uint8),
                      rope.to(torch.bfloat16).contiguous().view(torch.uint8)], dim=-1)


def split_float_cache(kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A float [..., 576] latent cache -> contiguous (nope [..., 512], rope [..., 64]) in its dtype."""
    if kv.shape[-1] != LATENT + ROPE:
        raise ValidationError("split_float_cache", "kv", f"[..., {LATENT + ROPE}]", list(kv.shape))
    return kv[..., :LATENT].contiguous(), kv[..., LATENT:].contiguous()


# -- dsport indices (-1 anywhere) <-> valid-first rows -----------------------------------------------------------
def valid_first(indices: torch.Tensor, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's valid entries to its front, keeping their order; the rest
    becomes ``SENTINEL``. Invalid: negative, or ``>= limit`` when given (dsport's
    prefill also treats indices >= S as invalid). Returns (rows, valid count per row)."""
    idx = indices.to(torch.int32)
    ok = idx >= 0
    if limit is not None:
        ok &= idx < limit
    # a stable sort on "is invalid" is the partition: valid entries keep their relative order
    order = torch.sort((~ok).to(torch.int8), dim=-1, stable=True).indices
    moved = torch.gather(torch.where(ok, idx, SENTINEL), -1, order)
    return moved, ok.sum(-1).to(torch.int32)


def from_valid_first(rows: torch.Tensor) -> torch.Tensor:
    """NPU rows back to dsport's convention: already valid dsport rows (-1 is
    dsport's invalid index too), after checking the NPU's precondition."""
    bad = is_valid_first(rows)
    if not bool(bad.all()):
        raise ValidationError("from_valid_first", "rows", "valid entries first, then only -1",
                              f"{int((~bad).sum())} row(s) with a valid entry after a -1")
    return rows.to(torch.int32)


def is_valid_first(rows: torch.Tensor) -> torch.Tensor:
    """Per row: True when no valid entry follows a -1 and every invalid entry is -1."""
    inv = rows < 0
    seen = torch.cummax(inv.to(torch.int8), dim=-1).values.bool() if rows.shape[-1] else inv
    return ~(seen & ~inv).any(-1) & ((rows >= 0) | (rows == SENTINEL)).all(-1)


# -- lengths <-> prefix sums (TND) --------------------------------------------------------------------------------
def lengths_to_prefix_sums(lengths: torch.Tensor) -> torch.Tensor:
    """Per-batch token counts -> the TND layout's ``actual_seq_lengths`` (inclusive prefix sums, int32)."""
    if lengths.dim() != 1 or bool((lengths < 0).any()):
        raise ValidationError("lengths_to_prefix_sums", "lengths", "a 1-D tensor of counts >= 0", list(lengths.shape))
    return torch.cumsum(lengths.to(torch.int64), 0).to(torch.int32)


def prefix_sums_to_lengths(sums: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`lengths_to_prefix_sums`; refuses a decreasing sequence (the README forbids it)."""
    lengths = torch.diff(sums.to(torch.int64), prepend=sums.new_zeros(1, dtype=torch.int64))
    if bool((lengths < 0).any()):
        raise ValidationError("prefix_sums_to_lengths", "sums", "non-decreasing prefix sums (README: 后一个元素的值必须>=前一个元素的值)",
                              sums.tolist())
    return lengths.to(torch.int32)


# -- softmax_max / softmax_sum (N2, T1, N1/N2) <-> lse [T1, N1] ---------------------------------------------------
def stats_to_lse(softmax_max: torch.Tensor, softmax_sum: torch.Tensor) -> torch.Tensor:
    """(N2, T1, G) max and sum of exp(s - max) -> natural-log lse [T1, N2 * G] (query head h = n2 * G + g).
    A row whose sum is 0 (nothing attended) gets -inf; a NaN sum (a NaN score) stays NaN, as SPEC §10
    wants (``sum > 0`` would call that row empty)."""
    lse = softmax_max.float() + torch.log(softmax_sum.float())
    lse = torch.where(softmax_sum == 0, torch.full_like(lse, float("-inf")), lse)
    n2, t, g = lse.shape
    return lse.permute(1, 0, 2).reshape(t, n2 * g)


def lse_to_stats(lse: torch.Tensor, n2: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """[T1, N1] lse -> one (max, sum) pair of shape (N2, T1, N1/N2) that :func:`stats_to_lse`
    maps back to it: max = lse, sum = 1 (sum = 0, max = -inf where lse is -inf)."""
    t, n1 = lse.shape
    m = lse.float().reshape(t, n2, n1 // n2).permute(1, 0, 2).contiguous()
    empty = torch.isneginf(m)
    return m, torch.where(empty, torch.zeros_like(m), torch.ones_like(m))


# -- sparse_mode 3: right-down causal -------------------------------------------------------------------------------
def right_down_causal_ends(s1: int, s2: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Exclusive key end per query under sparse_mode 3: query i of s1 sees keys j <= i + s2 - s1,
    i.e. ke[i] = clamp(i + s2 - s1 + 1, 0, s2) (dsport's causal prefill after an s2 - s1 prefix)."""
    return (torch.arange(s1, dtype=torch.int64, device=device) + (s2 - s1 + 1)).clamp(0, s2).to(torch.int32)


def as_sparse_mode(ks: torch.Tensor, ke: torch.Tensor, s2: int) -> int | None:
    """The sparse_mode that reproduces dsport windows [ks, ke) over s2 keys in one batch:
    0 for whole rows, 3 for right-down causal rows, None when neither does."""
    if ks.numel() and bool((ks != 0).any()):
        return None
    if bool((ke == s2).all()):
        return NO_MASK
    if bool((ke == right_down_causal_ends(ke.shape[0], s2, ke.device)).all()):
        return RIGHT_DOWN_CAUSAL
    return None
