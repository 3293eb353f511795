"""Contract models of the torch_npu ops dsport's Ascend adapters call.

Each function has the name, argument names, kinds and defaults of the op's
registered schema in torch-npu 2.13.0 (``torch_npu/csrc/aten/
npu_native_functions_by_codegen.yaml`` inside the wheel; checked by
``tests/test_npu_schema.py``) and reproduces the op's documented behaviour in
plain torch, so the adapters run on a CPU. They are models, not the kernels:
a case that passes through them is reported ``contract``.

Documented constraints are enforced (a call the NPU would reject raises);
behaviour the documents leave open is *poisoned* (NaN) so that an adapter
relying on it fails instead of passing by luck. Sources, per op:

* ``npu_sparse_flash_attention``: vllm-ascend ``csrc/attention/
  sparse_flash_attention/README.md`` (shapes, D = 512 / Dr = 64, N1 in
  {1..128 powers of 2}, block_size a multiple of 16 <= 1024, valid indices
  first, softmax_max / softmax_sum of shape (N2, T1, N1/N2)); its kernel's end
  of row at the first -1 (``op_kernel/arch22/sparse_flash_attention_kernel_mla.h``:
  ``if (sparseIndices == -1 || curTopKIdx == validCount)``); its use with
  ``layout_kv="PA_BSND", attention_mode=2`` in ``vllm_ascend/device/device_op.py``
  and ``lse = softmax_max + log(softmax_sum)`` in ``attention/context_parallel/sfa_cp.py``.
* ``npu_lightning_indexer``: vllm-ascend ``csrc/attention/lightning_indexer/README.md``
  (score = sum_h w[h] * ReLU(q[h] . k), top-k per token, N2 = 1, D = 128,
  N1 <= 64 on A3, sparse_count in [1, 2048] or {3072, ..., 8192},
  sparse_mode 0 / 3, values only with ``return_value``).
* ``npu_rms_norm`` / ``npu_add_rms_norm``: torch_npu ``_op_plugin_docs.py``
  (y = x * rsqrt(mean(x^2) + eps) * gamma; second output the reverse rms;
  add variant returns (y, rstd, x1 + x2)).
* ``npu_rotary_mul``: torch_npu ``_op_plugin_docs.py`` (half: out = r1 * x +
  r2 * cat(-x2, x1); interleave: the same with pairs (x[2i], x[2i+1]); 4-D
  input, D even and < 896, r1 / r2 broadcast as 1S1D for BSND input).
* ``npu_moe_gating_top_k``: torch_npu ``_op_plugin_docs.py`` (norm_type 1
  sigmoid / 0 softmax; group score the group max (group_select_mode 0) or its
  top-2 sum (1); k_group best of group_count groups; E / group_count > 2;
  renorm only 0) and vllm-ascend: its router sends sigmoid routing with
  renormalisation to this op and never sigmoid without it
  (``ops/fused_moe/router/router_factory.py``), and renormalises softmax
  weights itself afterwards (``device/device_op.py``): sigmoid weights come
  out renormalised, softmax weights do not; both times routed_scaling_factor.
* ``npu_grouped_matmul``: torch_npu ``_op_plugin_docs.py``, the non-quantized
  case with a single x [M, K], a single 3-D weight [G, K, N] and a single y
  (split_item 2/3), group_list a tensor grouping the M axis (group_type 0) as
  counts (group_list_type 1: non-negative, length not 1) or cumulative sums
  (0: non-decreasing); y = x_g @ weight_g per group, in x's dtype; K and N
  below the inner limit 65536.
"""
from __future__ import annotations

import torch

from .layouts import RIGHT_DOWN_CAUSAL, NO_MASK, SENTINEL

INT64_MAX = 9223372036854775807
HALF = (torch.bfloat16, torch.float16)
SPARSE_COUNTS = frozenset(range(1, 2049)) | {3072, 4096, 5120, 6144, 7168, 8192}


class NpuContractError(ValueError):
    """A call the documented NPU op rejects."""

    def __init__(self, op: str, what: str):
        super().__init__(f"{op}: {what}")


def _need(ok: bool, op: str, what: str) -> None:
    if not ok:
        raise NpuContractError(op, what)


def _dense(op: str, **tensors: torch.Tensor | None) -> None:
    """The READMEs: "不支持空tensor和非连续" (no empty, no non-contiguous tensors)."""
    for name, t in tensors.items():
        if t is not None:
            _need(t.numel() > 0, op, f"{name} is empty (the kernel does not take empty tensors)")
            _need(t.is_contiguous(), op, f"{name} is not contiguous")


def _batches(lengths: torch.Tensor | None, total: int, prefix_sums: bool) -> list[tuple[int, int]]:
    """(start, length) per batch of a TND (prefix sums) or BSND/PA (lengths) actual_seq_lengths."""
    if lengths is None:
        return [(0, total)]
    vals = [int(v) for v in lengths.tolist()]
    if not prefix_sums:
        return [(0, v) for v in vals]
    starts = [0] + vals[:-1]
    return [(s, e - s) for s, e in zip(starts, vals)]


def npu_sparse_flash_attention(query, key, value, sparse_indices, scale_value, *, block_table=None,
                               actual_seq_lengths_query=None, actual_seq_lengths_kv=None, query_rope=None, key_rope=None,
                               sparse_block_size=1, layout_query="BSND", layout_kv="BSND", sparse_mode=3,
                               pre_tokens=INT64_MAX, next_tokens=INT64_MAX, attention_mode=0, return_softmax_lse=False,
                               sinks=None):
    """MLA-absorb sparse attention over the selected tokens; returns (out, softmax_max, softmax_sum)."""
    op = "npu_sparse_flash_attention"
    _dense(op, query=query, key=key, value=value, sparse_indices=sparse_indices, query_rope=query_rope, key_rope=key_rope,
           block_table=block_table)
    _need(query.dtype in HALF and key.dtype == query.dtype and value.dtype == query.dtype, op,
          f"query/key/value must share one dtype of {HALF}, got {query.dtype}/{key.dtype}/{value.dtype}")
    _need(attention_mode == 2, op, f"attention_mode only supports 2 (MLA-absorb), got {attention_mode}")
    _need(query_rope is not None and key_rope is not None, op, "query_rope and key_rope are required (rope may not be empty)")
    _need(query.shape[-1] == 512 and key.shape[-1] == 512 and query_rope.shape[-1] == 64 and key_rope.shape[-1] == 64, op,
          "D must be 512 and Dr 64")
    _need(sparse_block_size == 1, op, "this model covers token-wise sparsity (sparse_block_size=1) only")
    _need(sparse_mode in (NO_MASK, RIGHT_DOWN_CAUSAL), op, f"sparse_mode must be 0 or 3, got {sparse_mode}")
    _need(pre_tokens == INT64_MAX and next_tokens == INT64_MAX, op, "pre_tokens/next_tokens only support 2^63-1")
    _need(sinks is None, op, "sinks are not modelled")
    _need(layout_query == "TND", op, f"this model covers layout_query='TND', got {layout_query!r}")
    _need(layout_kv in ("TND", "PA_BSND"), op, f"this model covers layout_kv 'TND' or 'PA_BSND', got {layout_kv!r}")
    _need(actual_seq_lengths_query is not None, op, "actual_seq_lengths_query is required with TND")
    t1, n1, _ = query.shape
    _need(n1 in (1, 2, 4, 8, 16, 32, 64, 128), op, f"N1 must be a power of 2 <= 128, got {n1}")
    paged = layout_kv == "PA_BSND"
    if paged:
        _need(block_table is not None and actual_seq_lengths_kv is not None, op, "PA_BSND needs block_table and actual_seq_lengths_kv")
        bs = key.shape[1]
        _need(bs % 16 == 0 and bs <= 1024, op, f"block_size must be a multiple of 16 <= 1024, got {bs}")
        n2 = key.shape[2]
    else:
        n2 = key.shape[1]
    _need(n2 == 1 and sparse_indices.shape[-2] == 1, op, "MLA-absorb has one shared KV head (N2 = 1)")
    q_batches = _batches(actual_seq_lengths_query, t1, prefix_sums=True)
    kv_batches = _batches(actual_seq_lengths_kv, key.shape[0], prefix_sums=not paged)
    _need(len(kv_batches) == len(q_batches), op, "actual_seq_lengths_query and _kv disagree on B")

    out = torch.full((t1, n1, 512), float("nan"))  # rows with nothing to attend: undocumented, poisoned
    m = torch.full((1, t1, n1), float("nan"))
    s = torch.full((1, t1, n1), float("nan"))
    for b, ((q0, ql), (k0, kl)) in enumerate(zip(q_batches, kv_batches)):
        if ql == 0:
            continue
        idx = sparse_indices[q0:q0 + ql, 0].long()                        # [ql, K]
        read = torch.cumprod((idx != SENTINEL).long(), dim=-1).bool()      # the row ends at its first -1
        visible = read & (idx >= 0) & (idx < kl)
        if sparse_mode == RIGHT_DOWN_CAUSAL:
            visible &= idx <= (torch.arange(ql)[:, None] + kl - ql)
        pos = torch.where(visible, idx, 0)
        if paged:
            blocks = block_table[b, pos // bs].long()
            kn, kr, v = (t_[blocks, pos % bs, 0].float() for t_ in (key, key_rope, value))
        else:
            kn, kr, v = (t_[k0 + pos, 0].float() for t_ in (key, key_rope, value))
        # the kernel never loads a slot it does not select: a stand-in row here must not carry what that
        # slot holds (NaN in unused cache memory would survive p = 0 in the products below)
        kn, kr, v = (torch.where(visible[..., None], t_, 0.0) for t_ in (kn, kr, v))
        logits = (torch.einsum("thd,tkd->thk", query[q0:q0 + ql].float(), kn)
                  + torch.einsum("thd,tkd->thk", query_rope[q0:q0 + ql].float(), kr)) * scale_value
        logits = logits.masked_fill(~visible[:, None, :], float("-inf"))
        mx = logits.amax(-1)
        p = torch.exp(logits - mx[..., None]).masked_fill(~visible[:, None, :], 0.0)
        total = p.sum(-1)
        some = visible.any(-1)
        rows = torch.einsum("thk,tkd->thd", p, v) / total[..., None]
        out[q0:q0 + ql][some] = rows[some]
        m[0, q0:q0 + ql][some], s[0, q0:q0 + ql][some] = mx[some], total[some]
    if not return_softmax_lse:
        m, s = torch.empty(0), torch.empty(0)
    return out.to(query.dtype), m, s


def npu_lightning_indexer(query, key, weights, *, actual_seq_lengths_query=None, actual_seq_lengths_key=None,
                          block_table=None, layout_query="BSND", layout_key="BSND", sparse_count=2048, sparse_mode=3,
                          pre_tokens=INT64_MAX, next_tokens=INT64_MAX, return_value=False):
    """Top-sparse_count key positions per query token by sum_h w[h] * relu(q[h] . k); returns
    (sparse_indices [T1, 1, sparse_count] int32, -1 after the valid ones; sparse_values or empty)."""
    op = "npu_lightning_indexer"
    _dense(op, query=query, key=key, weights=weights, block_table=block_table)
    _need(query.dtype in HALF and key.dtype == query.dtype, op, f"query/key must share one dtype of {HALF}")
    _need(weights.dtype == query.dtype or weights.dtype == torch.float32, op, "weights must be query's dtype or float32")
    _need(layout_query == "TND" and layout_key in ("TND", "PA_BSND"), op,
          f"this model covers layout_query='TND' with layout_key 'TND' or 'PA_BSND', got {layout_query!r}/{layout_key!r}")
    _need(sparse_count in SPARSE_COUNTS, op, f"sparse_count {sparse_count} not in [1, 2048] or {{3072, ..., 8192}}")
    _need(sparse_mode in (NO_MASK, RIGHT_DOWN_CAUSAL), op, f"sparse_mode must be 0 or 3, got {sparse_mode}")
    _need(pre_tokens == INT64_MAX and next_tokens == INT64_MAX, op, "pre_tokens/next_tokens only support 2^63-1")
    _need(actual_seq_lengths_query is not None, op, "actual_seq_lengths_query is required with TND")
    t1, n1, d = query.shape
    _need(d == 128 and n1 <= 64, op, f"head dim must be 128 and N1 <= 64 (A3), got D={d}, N1={n1}")
    paged = layout_key == "PA_BSND"
    if paged:
        _need(block_table is not None and actual_seq_lengths_key is not None, op, "PA_BSND needs block_table and actual_seq_lengths_key")
        bs = key.shape[1]
        _need(bs % 16 == 0 and bs <= 1024, op, f"block_size must be a multiple of 16 <= 1024, got {bs}")
        _need(key.shape[2] == 1, op, "N2 must be 1")
    else:
        _need(key.shape[1] == 1, op, "N2 must be 1")
    _need(not return_value or not paged, op, "return_value is not supported with PA_BSND")
    q_batches = _batches(actual_seq_lengths_query, t1, prefix_sums=True)
    k_batches = _batches(actual_seq_lengths_key, key.shape[0], prefix_sums=not paged)
    _need(len(k_batches) == len(q_batches), op, "actual_seq_lengths_query and _key disagree on B")

    idx = torch.full((t1, 1, sparse_count), SENTINEL, dtype=torch.int32)
    val = torch.full((t1, 1, sparse_count), float("nan"))
    for b, ((q0, ql), (k0, kl)) in enumerate(zip(q_batches, k_batches)):
        if paged:
            pos = torch.arange(kl)
            keys = key[block_table[b, pos // bs].long(), pos % bs, 0].float()
        else:
            keys = key[k0:k0 + kl, 0].float()
        for i in range(ql):
            t = q0 + i
            n = kl if sparse_mode == NO_MASK else max(0, min(kl, i + kl - ql + 1))
            score = (torch.relu(query[t].float() @ keys[:n].T) * weights[t].float()[:, None]).sum(0)
            k = min(sparse_count, n)
            top = torch.topk(score, k) if k else None
            if k:
                idx[t, 0, :k] = top.indices.int()
                val[t, 0, :k] = top.values
    values = val.to(query.dtype) if return_value else torch.empty(0)
    return idx, values


def npu_rms_norm(self, gamma, epsilon=1e-06):
    """(y = x * rstd * gamma in x's dtype, rstd fp32 over gamma's dims)."""
    op = "npu_rms_norm"
    _need(self.dtype in (*HALF, torch.float32) and gamma.dtype == self.dtype, op,
          f"self and gamma share one dtype of float16/bfloat16/float32, got {self.dtype}/{gamma.dtype}")
    dims = tuple(range(-gamma.dim(), 0))
    x = self.float()
    rstd = torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + epsilon)
    return (x * rstd * gamma.float()).to(self.dtype), rstd


def npu_add_rms_norm(x1, x2, gamma, epsilon=1e-06):
    """(rms_norm(x1 + x2), rstd, x1 + x2); the sum is kept in fp32 for the norm and returned in x1's dtype."""
    op = "npu_add_rms_norm"
    _need(x1.dtype == x2.dtype == gamma.dtype, op, f"x1, x2 and gamma share one dtype, got {x1.dtype}/{x2.dtype}/{gamma.dtype}")
    h = x1.float() + x2.float()
    dims = tuple(range(-gamma.dim(), 0))
    rstd = torch.rsqrt(h.pow(2).mean(dims, keepdim=True) + epsilon)
    return (h * rstd * gamma.float()).to(x1.dtype), rstd, h.to(x1.dtype)


def npu_rotary_mul(self, r1, r2, rotary_mode="half", rotate=None):
    """Rotary embedding of a 4-D input with cos (r1) / sin (r2) tables of the full head dim."""
    op = "npu_rotary_mul"
    _need(self.dim() == 4 and r1.dim() == 4 and r2.dim() == 4 and r1.shape == r2.shape, op,
          f"input, r1 and r2 are 4-D with r1.shape == r2.shape, got {list(self.shape)}, {list(r1.shape)}, {list(r2.shape)}")
    _need(rotary_mode in ("half", "interleave"), op, f"rotary_mode 'half' or 'interleave', got {rotary_mode!r}")
    _need(rotate is None, op, "the rotate matrix is not modelled")
    _need(self.dtype in (*HALF, torch.float32), op, f"dtype float16/bfloat16/float32, got {self.dtype}")
    b, s_, n, d = self.shape
    _need(d % 2 == 0 and d < 896, op, f"D even and < 896, got {d}")
    _need(r1.shape[-1] == d and r1.shape[1] == s_ and r1.shape[0] in (1, b) and r1.shape[2] in (1, n), op,
          f"r1 broadcast over BSND as 1S1D / BS1D / BSND, got {list(r1.shape)} for {list(self.shape)}")
    if rotary_mode == "interleave":
        _need(r1.shape[0] == 1 and r1.shape[2] == 1 and b * n < 1000, op, "interleave: r1 as 1S1D and B * N < 1000")
    else:
        _need(b < 1000 and n < 1000, op, "half: B, N < 1000")
    x = self.float()
    if rotary_mode == "half":
        x1, x2 = x.chunk(2, dim=-1)
        xn = torch.cat((-x2, x1), dim=-1)
    else:
        xn = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    return (r1.float() * x + r2.float() * xn).to(self.dtype)


def npu_moe_gating_top_k(x, k, *, bias=None, input_ids=None, tid2eid=None, k_group=1, group_count=1, group_select_mode=0,
                         renorm=0, norm_type=0, out_flag=False, routed_scaling_factor=1.0, eps=1e-20):
    """(y [T, k] in x's dtype, expert_idx [T, k] int32, norm_out fp32 [T, E] or empty without out_flag)."""
    op = "npu_moe_gating_top_k"
    _need(x.dim() == 2 and x.dtype in (*HALF, torch.float32), op, f"2-D float16/bfloat16/float32 x, got {x.dtype} {list(x.shape)}")
    t, e = x.shape
    _need(e <= 2048 and group_count > 0 and e % group_count == 0 and e // group_count > 2, op,
          f"E <= 2048 divisible by group_count with more than 2 experts per group, got E={e}, group_count={group_count}")
    _need(-(-(e // group_count) // 32) * 32 * group_count <= 2048, op, "align32(E / group_count) * group_count <= 2048")
    _need(1 <= k_group <= group_count and 1 <= k <= e // group_count * k_group, op,
          f"1 <= k_group <= group_count and 1 <= k <= E / group_count * k_group, got k={k}, k_group={k_group}")
    _need(bias is None or (bias.shape == (e,) and bias.dtype == x.dtype), op, "bias [E] in x's dtype")
    _need(input_ids is None and tid2eid is None, op, "the hash routing mode is not modelled")
    _need(renorm == 0 and norm_type in (0, 1) and group_select_mode in (0, 1), op,
          f"renorm 0, norm_type 0/1, group_select_mode 0/1, got {renorm}/{norm_type}/{group_select_mode}")
    h = x.float()
    norm = h.sigmoid() if norm_type == 1 else h.softmax(-1)
    sel = norm if bias is None else norm + bias.float()
    if group_count > 1:
        g = sel.view(t, group_count, e // group_count)
        score = g.amax(-1) if group_select_mode == 0 else g.topk(2, dim=-1).values.sum(-1)
        keep = torch.zeros(t, group_count, dtype=torch.bool).scatter_(1, score.topk(k_group, dim=-1).indices, True)
        sel = sel.masked_fill(~keep.repeat_interleave(e // group_count, dim=1), float("-inf"))
    idx = sel.topk(k, dim=-1).indices
    y = norm.gather(1, idx)
    if norm_type == 1:
        y = y / (y.sum(-1, keepdim=True) + eps)
    y = y * routed_scaling_factor
    return y.to(x.dtype), idx.to(torch.int32), norm if out_flag else torch.empty(0)


def npu_grouped_matmul(x, weight, *, bias=None, scale=None, offset=None, antiquant_scale=None, antiquant_offset=None,
                       per_token_scale=None, group_list=None, activation_input=None, activation_quant_scale=None,
                       activation_quant_offset=None, split_item=0, group_type=None, group_list_type=0, act_type=0,
                       tuning_config=None, output_dtype=None, x_dtype=None, weight_dtype=None, scale_dtype=None,
                       per_token_scale_dtype=None):
    """[y]: the rows of x grouped along M by group_list, each group times its weight."""
    op = "npu_grouped_matmul"
    _need(len(x) == 1 and len(weight) == 1 and x[0].dim() == 2 and weight[0].dim() == 3, op,
          "this model covers one 2-D x and one 3-D weight [G, K, N]")
    _need(split_item in (2, 3) and group_type == 0 and isinstance(group_list, torch.Tensor), op,
          "split_item 2/3 (one output), group_type 0 (M axis), group_list a tensor")
    unused = (bias, scale, offset, antiquant_scale, antiquant_offset, per_token_scale, activation_input,
              activation_quant_scale, activation_quant_offset, tuning_config, output_dtype, x_dtype, weight_dtype,
              scale_dtype, per_token_scale_dtype)
    _need(all(v is None for v in unused) and act_type == 0, op, "only the non-quantized case without bias or activation")
    a, w = x[0], weight[0]
    _need(a.dtype in (*HALF, torch.float32) and w.dtype == a.dtype, op, f"x and weight share one float dtype, got {a.dtype}/{w.dtype}")
    g, k, n = w.shape
    _need(a.shape[1] == k and k < 65536 and n < 65536, op, f"x [M, {k}] for weight [G, K, N] with K, N < 65536")
    gl = group_list.long()
    _need(gl.dim() == 1 and gl.numel() == g, op, f"group_list of length G = {g}")
    if group_list_type == 1:
        _need(bool((gl >= 0).all()) and g != 1, op, "group_list_type 1: non-negative counts, length not 1")
        ends = torch.cumsum(gl, 0)
    else:
        _need(group_list_type == 0 and bool((gl >= 0).all()) and bool((gl[1:] >= gl[:-1]).all()), op,
              "group_list_type 0: non-negative non-decreasing cumulative sums")
        ends = gl
    _need(int(ends[-1]) <= a.shape[0], op, f"the groups cover {int(ends[-1])} rows, x has {a.shape[0]}")
    y = torch.full((a.shape[0], n), float("nan"))  # rows past the last group: undocumented, poisoned
    start = 0
    for i, end in enumerate(ends.tolist()):
        y[start:end] = a[start:end].float() @ w[i].float()
        start = end
    return [y.to(a.dtype)]


#: every modelled op, by its torch_npu name
MODELS = {f.__name__: f for f in (npu_sparse_flash_attention, npu_lightning_indexer, npu_rms_norm, npu_add_rms_norm,
                                  npu_rotary_mul, npu_moe_gating_top_k, npu_grouped_matmul)}
