"""Every limit of the cuda backend is declared: a call that `refusal` accepts
never ends in NotImplementedError, and every `raise NotImplementedError` in
the backend's code is reached by a probe that `refusal` refuses first.

The own kernels cannot launch here (no GPU): `launch.kernel` is replaced by a
recorder and the inputs stay on the CPU with the query saying "cuda", so
everything up to the launch — the checks, the output allocation, the grid —
runs for real. The adapters run over their contract models."""
import ast
import traceback
from pathlib import Path

import pytest
import torch

import dsport.backends.cuda as cuda
from dsport.backends.cuda import deepgemm, flashmla, launch
from dsport.core.backend import from_module
from dsport.core.capabilities import capability_of, query_of
from dsport.core.spec import randn, specs

SOURCES = [Path(m.__file__) for m in (launch, flashmla, deepgemm)]


@pytest.fixture
def recorder(monkeypatch):
    """launch.kernel -> a stand-in that checks the grid and records the launch."""
    launched = []

    def kernel(name):
        def run(grid, block, args, stream):
            assert len(grid) == 3 and min(grid) >= 0, f"{name}: grid {grid}"
            assert grid[0] < 2 ** 31 and grid[1] <= 65535 and grid[2] <= 65535, f"{name}: grid {grid} past CUDA's limits"
            assert max(block) <= 1024, f"{name}: block {block}"
            launched.append((name, grid, args))
        return run

    monkeypatch.setattr(launch, "kernel", kernel)
    monkeypatch.setattr(launch, "_stream", lambda: 0)
    return launched


def _tables():
    """(label, op table, device the query names): the own kernels as if on the GPU, the adapters on CPU."""
    return [("own", launch.OPS, "cuda"), ("contract", cuda.contract_ops(), None)]


def _query(op, args, device):
    spec = specs()[op]
    bound = spec.bind(**args)
    q = query_of(spec, bound, spec.validate(bound))
    return {**q, "device": device} if device else q


def _run(fn, args):
    """None if fn ran; otherwise (file, line) of the raise and the message of a NotImplementedError."""
    try:
        fn(**args)
    except NotImplementedError as e:
        frame = traceback.extract_tb(e.__traceback__)[-1]
        return (Path(frame.filename).name, frame.lineno), str(e)
    return None


def _raise_sites() -> set[tuple[str, int]]:
    """(file, line range) of every `raise NotImplementedError` in the backend's code."""
    sites = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(call, ast.Name) and call.id == "NotImplementedError":
                    sites.add((path.name, node.lineno, node.end_lineno))
    return sites


def test_every_implementation_declares_its_capability():
    b = from_module(cuda)
    for label, table, _ in _tables():
        missing = [op for op, fn in table.items() if capability_of(fn) is None]
        assert not missing, f"{label}: no declared Capability for {missing}"
    assert set(b.capabilities) == set(b.ops) | set(cuda.contract_ops())


def test_no_case_refusal_accepts_ends_in_not_implemented(recorder):
    b = from_module(cuda)
    escaped, accepted = [], 0
    for label, table, device in _tables():
        for op, fn in table.items():
            for case in specs()[op].cases():
                if "quick" not in case.tags and label == "contract":
                    continue  # the contract models are plain torch: the quick set covers their shapes
                args = case.inputs()
                if b.refusal(op, _query(op, args, device), table):
                    continue
                accepted += 1
                hit = _run(fn, args)
                if hit:
                    escaped.append(f"{label} {op}/{case.id}: {hit[1]}")
    assert not escaped, "undeclared limits:\n" + "\n".join(escaped)
    assert accepted > 50 and recorder  # the check ran on real cases and real launches were reached


# -- probes: one input past each limit -----------------------------------------------------------
def _g():
    return torch.Generator().manual_seed(0)


def _prefill(h=16, dqk=576, d_v=512, dtype=torch.bfloat16, kv_dtype=None):
    g = _g()
    return {"q": randn(g, 3, h, dqk, dtype=dtype), "kv": randn(g, 8, 1, dqk, dtype=kv_dtype or dtype),
            "indices": torch.randint(0, 8, (3, 1, 4), generator=g, dtype=torch.int32), "sm_scale": 0.1, "d_v": d_v}


def _decode(h=16, cache="fp8", fmt="e4m3fn", q_dtype=torch.bfloat16, d_v=512):
    g = _g()
    if cache == "fp8":
        kv = torch.randint(0, 100, (2, 4, 1, 656), generator=g, dtype=torch.uint8)
        kv[..., 512:528] = torch.tensor([1.0] * 4).view(torch.uint8)  # unit tile scales
    else:
        kv = randn(g, 2, 4, 1, 576, dtype=cache)
    return {"q": randn(g, 1, 1, h, 576, dtype=q_dtype), "kv_cache": kv,
            "indices": torch.randint(0, 8, (1, 1, 4), generator=g, dtype=torch.int32), "sm_scale": 0.1, "d_v": d_v, "fmt": fmt}


def _gemm(fmt=torch.float8_e4m3fn):
    g = _g()
    return {"a": randn(g, 4, 128).to(fmt), "sa": torch.ones(4, 1), "b": randn(g, 128, 128).to(fmt), "sb": torch.ones(1, 1)}


def _logits(d=128, dtype=torch.float8_e4m3fn):
    g = _g()
    fp8 = dtype in (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
    return {"q": randn(g, 2, 4, d).to(dtype), "k": randn(g, 6, d).to(dtype), "weights": torch.ones(2, 4),
            "ks": torch.zeros(2, dtype=torch.int32), "ke": torch.full((2,), 6, dtype=torch.int32),
            "k_scale": torch.ones(6) if fp8 else None}


def _paged(bs=64, fmt=torch.float8_e4m3fn):
    g = _g()
    return {"q": randn(g, 1, 4, 128).to(fmt), "k_cache": torch.zeros(2, bs, 132, dtype=torch.uint8),
            "weights": torch.ones(1, 4), "block_table": torch.tensor([[0, 1]], dtype=torch.int32),
            "seqlens": torch.tensor([bs], dtype=torch.int32)}


def _gate(e=64, n_group=8, topk=6, topk_group=1, x_dtype=torch.bfloat16, w_dtype=torch.bfloat16):
    g = _g()
    return {"x": randn(g, 2, 32, dtype=x_dtype), "weight": randn(g, e, 32, dtype=w_dtype), "bias": None,
            "n_group": n_group, "topk_group": topk_group, "topk": topk}


def _grouped_contiguous(dtype=torch.bfloat16):
    g = _g()
    return {"a": randn(g, 128, 32, dtype=dtype), "b": randn(g, 1, 16, 32, dtype=dtype),
            "m_indices": torch.zeros(128, dtype=torch.int32)}


def _grouped_masked(dtype=torch.bfloat16):
    g = _g()
    return {"a": randn(g, 2, 8, 32, dtype=dtype), "b": randn(g, 2, 16, 32, dtype=dtype),
            "masked_m": torch.tensor([3, 8], dtype=torch.int32)}


OWN = launch.OPS
ADAPTER = cuda.contract_ops()
# (table, op, inputs within every limit, inputs past one limit)
PROBES = {
    "act_quant-block64": (OWN, "act_quant", {"x": randn(_g(), 2, 128)}, {"x": randn(_g(), 2, 128), "block": 64}),
    "act_quant-fp32": (OWN, "act_quant", {"x": randn(_g(), 2, 128)}, {"x": randn(_g(), 2, 128, dtype=torch.float32)}),
    "fp8_gemm-fnuz": (OWN, "fp8_gemm", _gemm(), _gemm(torch.float8_e4m3fnuz)),
    "indexer_logits-D64": (OWN, "indexer_logits", _logits(), _logits(d=64)),
    "indexer_logits-bf16": (OWN, "indexer_logits", _logits(), _logits(dtype=torch.bfloat16)),
    "sparse_mla_decode-fp32-q": (OWN, "sparse_mla_decode", _decode(), _decode(q_dtype=torch.float32)),
    "sparse_mla_decode-fp32-cache": (OWN, "sparse_mla_decode", _decode(cache=torch.bfloat16), _decode(cache=torch.float32)),
    "sparse_mla_decode-SQ65536": (OWN, "sparse_mla_decode", _decode(cache=torch.bfloat16),
                                  {**_decode(cache=torch.bfloat16), "q": torch.zeros(1, 65536, 1, 576, dtype=torch.bfloat16),
                                   "indices": torch.zeros(1, 65536, 1, dtype=torch.int32)}),
    "sparse_mla_decode-dv256": (OWN, "sparse_mla_decode", _decode(cache=torch.bfloat16), _decode(cache=torch.bfloat16, d_v=256)),
    "sparse_mla_prefill-dqk192": (OWN, "sparse_mla_prefill", _prefill(), _prefill(dqk=192, d_v=128)),
    "sparse_mla_prefill-fp32-kv": (OWN, "sparse_mla_prefill", _prefill(), _prefill(kv_dtype=torch.float32)),
    "rms_norm-D12": (OWN, "rms_norm", {"x": randn(_g(), 2, 16), "w": randn(_g(), 16)}, {"x": randn(_g(), 2, 12), "w": randn(_g(), 12)}),
    "rms_norm-D8200": (OWN, "rms_norm", {"x": randn(_g(), 2, 8192), "w": randn(_g(), 8192)},
                       {"x": randn(_g(), 2, 8200), "w": randn(_g(), 8200)}),
    "rms_norm-fp32-w": (OWN, "rms_norm", {"x": randn(_g(), 2, 16), "w": randn(_g(), 16)},
                        {"x": randn(_g(), 2, 16), "w": randn(_g(), 16, dtype=torch.float32)}),
    "rope-fp32": (OWN, "rope", {"x": randn(_g(), 2, 2, 8), "positions": torch.arange(2), "freqs": torch.ones(4), "interleaved": True},
                  {"x": randn(_g(), 2, 2, 8, dtype=torch.float32), "positions": torch.arange(2), "freqs": torch.ones(4),
                   "interleaved": True}),
    "topk_select-fp64": (OWN, "topk_select", {"logits": torch.randn(2, 40), "k": 4},
                         {"logits": torch.randn(2, 40, dtype=torch.float64), "k": 4}),
    "moe_gate-E520": (OWN, "moe_gate", _gate(), _gate(e=520)),
    "moe_gate-64-groups": (OWN, "moe_gate", _gate(), _gate(e=128, n_group=64, topk_group=4)),
    "moe_gate-topk40": (OWN, "moe_gate", _gate(), _gate(e=128, n_group=1, topk=40)),
    "moe_gate-fp32-weight": (OWN, "moe_gate", _gate(), _gate(w_dtype=torch.float32)),
    "flashmla-prefill-h192": (ADAPTER, "sparse_mla_prefill", _prefill(), _prefill(h=192)),
    "flashmla-prefill-fp32-kv": (ADAPTER, "sparse_mla_prefill", _prefill(), _prefill(kv_dtype=torch.float32)),
    "flashmla-prefill-fp32-q": (ADAPTER, "sparse_mla_prefill", _prefill(), _prefill(dtype=torch.float32, kv_dtype=torch.bfloat16)),
    "flashmla-prefill-dqk192": (ADAPTER, "sparse_mla_prefill", _prefill(), _prefill(dqk=192, d_v=128)),
    "flashmla-decode-h192": (ADAPTER, "sparse_mla_decode", _decode(), _decode(h=192)),
    "flashmla-decode-bf16-cache": (ADAPTER, "sparse_mla_decode", _decode(), _decode(cache=torch.bfloat16)),
    "flashmla-decode-fnuz": (ADAPTER, "sparse_mla_decode", _decode(), _decode(fmt="e4m3fnuz")),
    "flashmla-decode-fp32-q": (ADAPTER, "sparse_mla_decode", _decode(), _decode(q_dtype=torch.float32)),
    "deepgemm-gemm-fnuz": (ADAPTER, "fp8_gemm", _gemm(), _gemm(torch.float8_e4m3fnuz)),
    "deepgemm-logits-bf16": (ADAPTER, "indexer_logits", _logits(), _logits(dtype=torch.bfloat16)),
    "deepgemm-logits-D64": (ADAPTER, "indexer_logits", _logits(), _logits(d=64)),
    "deepgemm-paged-bs16": (ADAPTER, "indexer_logits_paged", _paged(), _paged(bs=16)),
    "deepgemm-paged-fnuz": (ADAPTER, "indexer_logits_paged", _paged(), _paged(fmt=torch.float8_e4m3fnuz)),
    "deepgemm-contiguous-fp32": (ADAPTER, "moe_grouped_gemm_contiguous", _grouped_contiguous(), _grouped_contiguous(torch.float32)),
    "deepgemm-masked-fp32": (ADAPTER, "moe_grouped_gemm_masked", _grouped_masked(), _grouped_masked(torch.float32)),
}


@pytest.mark.parametrize("name", list(PROBES))
def test_each_limit_is_refused_before_the_call(name, recorder):
    table, op, inside, past = PROBES[name]
    device = "cuda" if table is OWN else None
    b = from_module(cuda)
    assert b.refusal(op, _query(op, inside, device), table) == ()  # the probe's base is served...
    assert _run(table[op], inside) is None
    refused = b.refusal(op, _query(op, past, device), table)
    hit = _run(table[op], past)
    assert hit is not None, f"{name}: the implementation accepted the input past its limit"
    assert refused, f"{name}: raised NotImplementedError ({hit[1]}) but refusal() accepted it: an undeclared limit"


def test_the_probes_reach_every_not_implemented_in_the_code(recorder):
    hit_lines = set()
    for table, op, _, past in PROBES.values():
        hit = _run(table[op], past)
        if hit:
            hit_lines.add(hit[0])
    unreached = [(f, lo) for f, lo, hi in _raise_sites() if not any(hf == f and lo <= hl <= hi for hf, hl in hit_lines)]
    assert not unreached, f"raise NotImplementedError sites no probe reaches (add one): {unreached}"


def test_calls_past_the_grid_limit_are_launched_in_slices(recorder):
    # 70000 prefill tokens run along grid z, 70000 indexer queries along grid y: both limited to 65535
    t = 70000
    out, lse, mx = launch.sparse_mla_prefill(torch.zeros(t, 1, 576, dtype=torch.bfloat16), torch.zeros(4, 1, 576, dtype=torch.bfloat16),
                                             torch.zeros(t, 1, 2, dtype=torch.int32), 0.1)
    (n1, g1, a1), (n2, g2, a2) = recorder
    assert n1 == n2 == "sparse_mla_bf16" and g1 == (1, 1, 65535) and g2 == (1, 1, t - 65535)
    assert a1[6] == out.data_ptr() and a2[6] - a1[6] == 65535 * 512 * 2  # out: the second slice starts at token 65535
    assert a2[7] - a1[7] == 65535 * 4 and a2[8] - a1[8] == 65535 * 4 and a2[5] - a1[5] == 65535 * 2 * 4  # lse, max, indices
    recorder.clear()
    g = _g()
    launch.indexer_logits(randn(g, t, 1, 128).to(torch.float8_e4m3fn), randn(g, 3, 128).to(torch.float8_e4m3fn),
                          torch.ones(t, 1), torch.zeros(t, dtype=torch.int32), torch.full((t,), 3, dtype=torch.int32), torch.ones(3))
    assert [grid for _, grid, _ in recorder] == [(1, 65535, 1), (1, t - 65535, 1)]
    assert recorder[1][2][6] - recorder[0][2][6] == 65535 * 3 * 4  # logits rows of the second slice


def test_limits_and_argument_dtypes_explain_themselves():
    from dsport.core.capabilities import Capability, Limit
    cap = Capability(limits=(Limit("D", max=8192, multiple=8, why="16-byte vectors"), Limit("block", values=(128,))),
                     arg_dtypes=(("w", (torch.bfloat16,)),))
    q = {"dims": {"D": 8200 + 4, "block": 64}, "arg_dtypes": {"w": torch.float32}}
    assert cap.reasons(q) == ["D = 8204 > 8192 (16-byte vectors)", "D = 8204 is not a multiple of 8 (16-byte vectors)",
                              "block = 64 not in [128]", "w dtype float32 not in ['bfloat16']"]
    assert cap.reasons({"dims": {"D": 4096, "block": 128}, "arg_dtypes": {"w": torch.bfloat16}}) == []
    assert cap.reasons({}) == []  # facts the query does not state are not held against the implementation
