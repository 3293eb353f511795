"""The hip backend: contract loading, the aiter adapters against their
contract models (verdict ``contract``, never ``pass``), three planted AMD
porting bugs that must come out ``fail``, the exact fn -> fnuz operand
mapping, and the gfx950/gfx942 builds (``built``: nothing here executes)."""
import ctypes
import dataclasses
import math
import re
import subprocess

import pytest
import torch

from dsport.backends.hip import aiter as A
from dsport.backends.hip import aot as hb
from dsport.backends.hip import host
from dsport.conformance import worker
from dsport.conformance.runner import ConformancePlan, run_backend, select_items
from dsport.core.backend import import_backend
from dsport.core.build import ToolchainMissing
from dsport.core.errors import ConfigError
from dsport.core.fp8 import E4M3FN, E4M3FNUZ
from dsport.core.registry import BUILTIN_BACKENDS
from dsport.core.spec import specs
from refusal_check import declared_and_raised, undeclared_refusals, without

PLANTED = "conformance_planted.hip_planted"


def test_registered_and_unavailable_for_named_reasons():
    assert BUILTIN_BACKENDS["hip"] == "dsport.backends.hip"
    b = import_backend("dsport.backends.hip")
    ok, why = b.available()
    assert not ok and "ROCm build" in why and "hip-python" in why and "aiter" in why
    assert b.targets == ("gfx950", "gfx942") and b.can_build and b.contract_ops is not None
    assert set(b.contract_ops()) == {"indexer_logits", "indexer_logits_paged", "topk_select", "fp8_gemm", "sparse_mla_decode",
                                     "moe_experts"}
    assert not set(b.ops) & set(b.not_served)


def test_fp8_format_follows_the_arch(monkeypatch):
    monkeypatch.setenv("DSPORT_HIP_ARCH", "gfx950")
    assert A.arch() == "gfx950" and A.ContractModel(A.arch()).fp8 is E4M3FN
    monkeypatch.setenv("DSPORT_HIP_ARCH", "gfx942")
    assert A.ContractModel(A.arch()).fp8 is E4M3FNUZ
    monkeypatch.setenv("DSPORT_HIP_ARCH", "sm_90a")
    with pytest.raises(ConfigError, match="DSPORT_HIP_ARCH"):
        A.arch()


def test_fn_to_fnuz_relabel_is_exact_for_every_byte():
    b = torch.arange(256, dtype=torch.uint8)
    fn = b.view(E4M3FN.dtype)
    fnuz, factor = A.to_arch(fn, E4M3FNUZ)
    got, want = fnuz.float() * factor, fn.float()
    assert factor == 2.0 and torch.equal(got.isnan(), want.isnan())
    fin = ~want.isnan()
    assert torch.equal(got[fin], want[fin].abs() * torch.sign(want[fin]) + 0.0)  # -0 becomes +0, nothing else moves
    assert fnuz.view(torch.uint8)[0x80] == 0x00 and (fnuz.view(torch.uint8)[[0x7F, 0xFF]] == 0x80).all()
    # the reverse is not exact (fnuz 2^-10 has no fn code): refused, never approximated
    with pytest.raises(TypeError, match="cannot be mapped exactly"):
        A.to_arch(b.view(E4M3FNUZ.dtype), E4M3FN)


def test_contract_models_read_bytes_in_the_arch_flavour():
    # the same bytes under gfx950's and gfx942's aiter: 448 x 1.0 as fn reads 224 x 0.5 as fnuz
    q = torch.tensor([448.0]).to(E4M3FN.dtype).reshape(1, 1, 1)
    k = torch.ones(1, 1).to(E4M3FN.dtype)
    args = (q, k, torch.ones(1), torch.ones(1, 1), torch.zeros(1, dtype=torch.int32), torch.ones(1, dtype=torch.int32))
    assert A.ContractModel("gfx950").fp8_mqa_logits(*args).item() == 448.0
    assert A.ContractModel("gfx942").fp8_mqa_logits(*args).item() == 112.0


def test_paged_model_page_size_1_is_per_token_and_64_is_per_block():
    torch.manual_seed(0)
    d, n = 8, 128
    k = torch.randn(n, d).to(E4M3FNUZ.dtype)
    s = torch.rand(n) + 0.5
    per_token = torch.cat([k.view(torch.uint8), s[:, None].contiguous().view(torch.uint8)], 1).reshape(n, 1, 1, d + 4)
    per_block = torch.cat([k.reshape(2, 64 * d).view(torch.uint8), s.reshape(2, 64).contiguous().view(torch.uint8)], 1)
    q = torch.randn(1, 1, 2, d).to(E4M3FNUZ.dtype)
    w = torch.ones(1, 2)
    m = A.ContractModel("gfx942")
    out1, out64 = torch.full((1, n), -math.inf), torch.full((1, n), -math.inf)
    m.deepgemm_fp8_paged_mqa_logits(q, per_token, w, out1, torch.tensor([n]), torch.arange(n)[None].int(), n)
    m.deepgemm_fp8_paged_mqa_logits(q, per_block.reshape(2, 64, 1, d + 4), w, out64, torch.tensor([n]),
                                    torch.arange(2)[None].int(), n, KVBlockSize=64)
    want = ((q.float()[0, 0] @ (k.float() * s[:, None]).T).relu()).sum(0)
    assert torch.allclose(out1[0], want, rtol=1e-5) and torch.allclose(out64[0], want, rtol=1e-5)


def test_topk_model_returns_absolute_indices():
    logits = torch.tensor([[9.0, 1.0, 5.0, 7.0, 3.0]])
    idx = torch.empty(1, 2, dtype=torch.int32)
    A.ContractModel("gfx942").top_k_per_row_prefill(logits, torch.tensor([2]), torch.tensor([5]), idx, None, 1, 5, 1)
    assert sorted(idx[0].tolist()) == [2, 3]  # window [2, 5): 5.0 and 7.0, as column indices of the row


def test_topk_adapter_uses_the_decode_form_for_windows_from_zero():
    calls = []

    class Spy(A.ContractModel):
        def top_k_per_row_decode(self, *a):
            calls.append("decode")
            return super().top_k_per_row_decode(*a)

        def top_k_per_row_prefill(self, *a):
            calls.append("prefill")
            return super().top_k_per_row_prefill(*a)

    topk = A.make_ops(Spy("gfx942"), "gfx942")["topk_select"]
    logits = torch.arange(12.0).reshape(2, 6)
    got = topk(logits, 2, torch.tensor([0, 0], dtype=torch.int32), torch.tensor([6, 3], dtype=torch.int32))
    assert calls[0] == "decode" and [sorted(r) for r in got.tolist()] == [[4, 5], [1, 2]]
    calls.clear()
    got = topk(logits, 2, torch.tensor([1, 2], dtype=torch.int32), torch.tensor([3, 6], dtype=torch.int32))
    assert calls == ["prefill"] and [sorted(r) for r in got.tolist()] == [[1, 2], [4, 5]]


def _items(op, pred=lambda case: True):
    plan = ConformancePlan(ops=[op])
    cases = {c.id: c for c in specs()[op].cases()}
    return [it for it in select_items(plan) if pred(cases[it[1]])], plan


def test_adapters_come_out_contract_never_pass():
    items = []
    for op, n in (("indexer_logits_paged", 4), ("fp8_gemm", 4), ("topk_select", 5), ("sparse_mla_decode", 5), ("indexer_logits", 4),
                  ("moe_experts", 11)):
        its, _ = _items(op)
        items += its[:n]
    items.append(("moe_experts", "ep-minus1-nan-weights"))  # named below, wherever the spec lists it
    items = list(dict.fromkeys(items))
    info, rows = run_backend("hip", "dsport.backends.hip", items, ConformancePlan(ops=None))
    got = {(r["op"], r["case"]): r["verdict"] for r in rows}
    assert info.available and "contract models" in info.reason
    assert "pass" not in got.values() and "fail" not in got.values() and "crash" not in got.values(), got
    assert sum(v == "contract" for v in got.values()) >= 25, got
    assert got[("moe_experts", "ep-minus1-nan-weights")] == "contract"  # -1 slots' NaN weights never read


def _fp8_case(c):
    return c.op == "moe_experts" or any(isinstance(v, torch.Tensor) and v.dtype in (E4M3FN.dtype, E4M3FNUZ.dtype)
                                        for v in c.inputs().values())


@pytest.mark.parametrize("plant, op, must_fail, may_pass", [
    ("paged-layout", "indexer_logits_paged", {"tiny", "page-size-64", "fnuz"}, {"page-size-1", "B0"}),
    ("fn-bytes-unmapped", "indexer_logits", {"tiny-fp8", "fp8-causal-prefix"}, {"fp8-fnuz", "T0"}),
    ("fn-bytes-unmapped", "fp8_gemm", {"tiny", "ragged-n"}, {"fnuz", "M0"}),
    ("ep-nan-weights", "moe_experts", {"ep-minus1-nan-weights"}, {"ep-minus1", "tiny", "all-minus1"}),
])
def test_planted_aiter_porting_bugs_fail(monkeypatch, plant, op, must_fail, may_pass):
    # in process (worker.run_case, as a conformance worker judges a case); the table cache is per module
    monkeypatch.setenv("DSPORT_HIP_PLANT", plant)
    monkeypatch.setattr(worker, "_CONTRACT_TABLES", {})
    planted, ref = import_backend(PLANTED), dict(import_backend("dsport.backends.reference").ops)
    got = {c: worker.run_case(planted, ref, op, c, contract=True)["verdict"] for c in must_fail | may_pass}
    assert all(got[c] == "fail" for c in must_fail), got
    # a layout bug that page size 1 hides, a format bug that fnuz inputs hide: the checker is not blanket-failing
    assert all(got[c] == "contract" for c in may_pass), got


def test_planted_fnuz_negative_zero_fails_where_a_weight_is_minus_zero(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    a = (torch.randn(4, 256, generator=gen) * 50).to(E4M3FN.dtype)
    b = (torch.randn(128, 256, generator=gen) * 50).to(E4M3FN.dtype)
    b.view(torch.uint8)[3, 7] = 0x80  # a pruned weight stored as -0
    args = {"a": a, "sa": torch.full((4, 2), 0.01), "b": b, "sb": torch.full((1, 2), 0.02)}
    ref = import_backend("dsport.backends.reference").ops["fp8_gemm"](**args)
    monkeypatch.setenv("DSPORT_HIP_PLANT", "fnuz-negzero")
    planted = import_backend(PLANTED).contract_ops()["fp8_gemm"](**args)
    clean = import_backend("dsport.backends.hip").contract_ops()["fp8_gemm"](**args)
    assert ref.isfinite().all() and planted[:, 3].isnan().all() and planted[:, :3].isfinite().all()
    assert (clean.double() - ref).abs().max() <= 1e-2 * ref.abs().max()  # bf16 output


# ---- builds (ziglang's clang; a toolchain that is absent is a skip with its reason) ----------
def _toolchain():
    try:
        hb._zig(), hb._resource_dir(hb._zig())
    except ToolchainMissing as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("target", hb.TARGETS)
def test_build_records_registers_lds_and_mfma(tmp_path, target):
    _toolchain()
    recs = {r.kernel: r for r in hb.build(target, tmp_path, files=("fp8_gemm.hip", "act_quant.hip"))}
    assert all(r.status == "built" for r in recs.values()), {k: r.detail for k, r in recs.items()}
    g = recs["dsp_fp8_gemm"]
    assert g.matrix_found and "v_mfma_f32_16x16x32_fp8_fp8" in g.extra["mfma_kinds"] and g.shared_bytes == 2 * 64 * 136
    assert g.registers > 0 and g.spills == 0 and g.extra["occupancy"] >= 1
    q = recs["dsp_act_quant_ue8m0"]
    assert q.extra["fp8"] == ("e4m3fnuz" if target == "gfx942" else "e4m3fn") and q.extra["fp8_cvt"] > 0  # the hardware cvt


def test_the_64_key_sparse_tile_does_not_fit_gfx942(tmp_path):
    _toolchain()
    zig = hb._zig()
    fl = [f if not f.startswith("-DDSP_LDS_BYTES") else "-DDSP_LDS_BYTES=163840" for f in hb.flags("gfx942")]
    r = subprocess.run([zig, "clang", *fl, f"-resource-dir={hb._resource_dir(zig)}", f"-I{host.KERNELS}", "-S", "-o",
                        str(tmp_path / "x.s"), str(host.KERNELS / "sparse_mla.hip")], capture_output=True, text=True)
    assert r.returncode != 0 and "local memory (99456) exceeds limit (65536)" in r.stderr
    names = {k.name for k in hb.FILES["sparse_mla.hip"] if k.lds <= hb.SHARED_LIMIT["gfx942"]}
    assert "dsp_sparse_mla_decode_nk32" in names and "dsp_sparse_mla_decode" not in names


def test_e8m0_scaled_mfma_gemm_builds_for_gfx950_only(tmp_path):
    _toolchain()
    (rec,) = hb.build("gfx950", tmp_path, files=("fp8_gemm_mx.hip",))
    assert rec.kernel == "dsp_fp8_gemm_e8m0" and rec.status == "built", rec.detail
    assert rec.extra["mfma_kinds"] == ["v_mfma_scale_f32_16x16x128_f8f6f4"] and rec.spills == 0  # the scaled MFMA only
    # gfx942: no record (the kernel is not its ISA's), the named reason, and the source refuses by #error
    assert hb.build("gfx942", tmp_path, files=("fp8_gemm_mx.hip",)) == []
    assert "gfx950-only" in hb.REFUSED["gfx942"]["dsp_fp8_gemm_e8m0"]
    with pytest.raises(subprocess.CalledProcessError) as e:
        hb.compile_file("fp8_gemm_mx.hip", "gfx942")
    assert "exists on gfx950 only" in e.value.stderr
    # and the reason is the ISA's, not only the guard's: clang refuses the builtin itself for gfx942
    src = tmp_path / "scaled.hip"
    src.write_text("typedef float f4 __attribute__((ext_vector_type(4))); typedef int i8 __attribute__((ext_vector_type(8)));\n"
                   "extern \"C\" __attribute__((global)) void k(f4* o, i8 a) {\n"
                   "  *o = __builtin_amdgcn_mfma_scale_f32_16x16x128_f8f6f4(a, a, *o, 0, 0, 0, 127, 0, 127); }\n")
    zig = hb._zig()
    r = subprocess.run([zig, "clang", *hb.flags("gfx942"), f"-resource-dir={hb._resource_dir(zig)}", "-S", "-o",
                        str(tmp_path / "s.s"), str(src)], capture_output=True, text=True)
    assert r.returncode != 0 and "needs target feature" in r.stderr, r.stderr[-500:]


def test_build_cache_key_moves_with_sources_and_flags():
    k1 = hb._key("act_quant.hip", hb.flags("gfx942"), "22")
    assert k1 != hb._key("act_quant.hip", hb.flags("gfx950"), "22") != hb._key("act_quant.hip", hb.flags("gfx942"), "23")


def _packed(args):
    """(offset, size) of each launch argument as hip-python packs them: natural alignment, in order."""
    out, at = [], 0
    for a in args:
        size = 8 if isinstance(a, torch.Tensor) or a is None else ctypes.sizeof(a)
        at = -(-at // size) * size
        out.append((at, size))
        at += size
    return out


def test_every_launcher_packs_the_kernels_argument_abi(monkeypatch):
    # the launch path cannot run here; what can be checked is that each launcher's arguments (count, size,
    # offset) and block size are the ones the code object's metadata declares for that kernel
    _toolchain()
    from dsport.backends.hip import launch as L

    seen = []
    monkeypatch.setattr(L, "launch", lambda src, kernel, grid, block, args, target: seen.append((src, kernel, block, args)))
    ops = L.kernel_ops("gfx942")
    fnuz = E4M3FNUZ.name
    x = torch.randn(4, 256).bfloat16()
    ops["act_quant"](x, fmt=fnuz, scale_fmt="ue8m0")
    ops["act_quant"](x, fmt=fnuz, scale_fmt="fp32")
    ops["rms_norm"](x, torch.ones(256))
    ops["rms_norm"](x, torch.ones(256), residual=x)
    ops["moe_gate"](torch.randn(2, 64).bfloat16(), torch.randn(16, 64).bfloat16(), torch.zeros(16), n_group=4,
                    topk_group=2, topk=4)
    ops["sparse_mla_prefill"](torch.randn(2, 16, 576).bfloat16(), torch.randn(8, 1, 576).bfloat16(),
                              torch.zeros(2, 1, 4, dtype=torch.int32), 0.1)
    ops["mla_cache_pack"](torch.randn(3, 576).bfloat16(), fmt=fnuz)
    assert len(seen) == 7
    for src, kernel, block, args in seen:
        _, asm, _ = hb.compile_file(src, "gfx942")
        meta = hb.kernel_args(asm, kernel)
        assert [(o, s) for o, s, _ in meta] == _packed(args), kernel
        assert all((k == "global_buffer") == (isinstance(a, torch.Tensor) or a is None) for (_, _, k), a in zip(meta, args)), kernel
        wg = int(re.search(r"\.max_flat_workgroup_size:\s+(\d+)", hb.kernel_asm(asm, kernel)).group(1))
        assert block == wg, kernel
    # the gfx950-only E8M0 kernel's launcher, against its gfx950 code object
    seen.clear()
    gemm = L.fp8_gemm_e8m0("gfx950")
    pow2 = torch.full((4, 2), 0.5)
    gemm(torch.zeros(4, 256).to(E4M3FN.dtype), pow2, torch.zeros(128, 256).to(E4M3FN.dtype), torch.full((1, 2), 2.0 ** -8))
    (src, kernel, block, args), = seen
    _, asm, _ = hb.compile_file(src, "gfx950")
    assert [(o, s) for o, s, _ in hb.kernel_args(asm, kernel)] == _packed(args)
    assert block == int(re.search(r"\.max_flat_workgroup_size:\s+(\d+)", hb.kernel_asm(asm, kernel)).group(1))
    with pytest.raises(ValueError, match="fp8_gemm: argument 'sa': expected ue8m0 scales"):
        gemm(torch.zeros(4, 256).to(E4M3FN.dtype), torch.full((4, 2), 0.3), torch.zeros(128, 256).to(E4M3FN.dtype), pow2[:1])
    with pytest.raises(NotImplementedError, match="gfx950-only"):
        L.fp8_gemm_e8m0("gfx942")
    # and the launchers refuse what their kernel was not built for, by name
    with pytest.raises(NotImplementedError, match=r"act_quant \(hip kernel\): takes fmt e4m3fnuz"):
        ops["act_quant"](x, fmt="e4m3fn")


# ---- every limit declared: refusal() answers before a call could refuse --------------------
def _kernel_table(monkeypatch, target):
    from dsport.backends.hip import launch as L

    monkeypatch.setattr(L, "launch", lambda *a: None)  # the launchers' own checks run; nothing launches
    return L.kernel_ops(target)


def test_every_case_refusal_accepts_passes_the_kernel_launchers(monkeypatch):
    # judged as on the device (torch on ROCm calls it "cuda"): every case of every set, full ones too
    b = import_backend("dsport.backends.hip")
    ops = _kernel_table(monkeypatch, b.module.ARCH)
    items = select_items(ConformancePlan(ops=sorted(ops), case_set="full"))
    accepted, declined, bad = undeclared_refusals(b, ops, items, device="cuda")
    assert not bad, bad
    assert accepted >= 20 and declined >= 5, (accepted, declined)


def test_every_case_refusal_accepts_runs_on_the_aiter_contract_models():
    b = import_backend("dsport.backends.hip")
    ops = dict(b.contract_ops())
    accepted, declined, bad = undeclared_refusals(b, ops, select_items(ConformancePlan(ops=sorted(ops))))
    assert not bad, bad
    assert accepted >= 25, (accepted, declined)


# the declarations a conformance case reaches (rms_norm's D <= 7168 and moe_gate's E/D/n_group maxima are
# declared too, but no case exceeds them, so dropping one of those cannot show here)
@pytest.mark.parametrize("op, field", [("rms_norm", "dtypes"), ("act_quant", "fp8_formats"), ("moe_gate", "params"),
                                       ("sparse_mla_prefill", "limits")])
def test_a_dropped_declaration_is_caught(monkeypatch, op, field):
    b = import_backend("dsport.backends.hip")
    ops = _kernel_table(monkeypatch, b.module.ARCH)
    caps = {**b.capabilities, op: without(b.capabilities[op], field)}
    items = select_items(ConformancePlan(ops=[op], case_set="full"))
    _, _, bad = undeclared_refusals(dataclasses.replace(b, capabilities=caps), ops, items, device="cuda")
    assert bad and all(m.startswith(f"{op}/") and "NotImplementedError" in m for m in bad), bad


def _hgate(e, d, n_group, topk=4, topk_group=2):
    return dict(x=torch.randn(1, d).bfloat16(), weight=torch.randn(e, d).bfloat16(), bias=torch.zeros(e),
                n_group=n_group, topk_group=topk_group, topk=topk)


@pytest.mark.parametrize("op, args, refused", [
    # no conformance case reaches these limits: inputs at each side of them
    ("rms_norm", dict(x=torch.randn(2, 7168).bfloat16(), w=torch.ones(7168)), False),
    ("rms_norm", dict(x=torch.randn(2, 7170).bfloat16(), w=torch.ones(7170)), True),
    ("moe_gate", _hgate(256, 64, 8), False),
    ("moe_gate", _hgate(264, 64, 8), True),
    ("moe_gate", _hgate(64, 7184, 8), True),
    ("moe_gate", _hgate(128, 64, 32), True),
    ("moe_gate", _hgate(256, 64, 8, topk=17, topk_group=4), True),
    ("act_quant", dict(x=torch.randn(2, 256).bfloat16(), block=64, fmt="e4m3fnuz"), True),
])
def test_declared_limits_are_the_launchers_refusals(monkeypatch, op, args, refused):
    b = import_backend("dsport.backends.hip")
    declared, raised = declared_and_raised(b, _kernel_table(monkeypatch, b.module.ARCH), op, args, device="cuda")
    assert bool(declared) == refused and (raised is not None) == refused, (declared, raised)


# ---- the gfx950-only DS3.2 decode (aiter mla_decode_fwd_ds32) --------------------------------
from dsport.backends.hip import aiter_ds32 as D  # noqa: E402
from dsport.conformance.metrics import judge  # noqa: E402
from dsport.core.capabilities import query_of  # noqa: E402
from dsport.core.fp8 import FP32, UE8M0, quantize_groups  # noqa: E402


def _ds32_cases():
    spec = specs()["sparse_mla_decode"]
    out = []
    for it in select_items(ConformancePlan(ops=["sparse_mla_decode"])):
        case = next(c for c in spec.cases() if c.id == it[1])
        args = case.inputs()
        bound = spec.bind(**args)
        if not D.CAPABILITY.reasons({**query_of(spec, bound, spec.validate(bound)), "arch": "gfx950"}):
            out.append((case.id, args))
    return out


def _q_the_kernel_sees(q):
    """q with its NoPE part through act_quant(32, e4m3fn, ue8m0), as the adapter hands it to the kernel."""
    y, s = quantize_groups(q[..., :512], 32, E4M3FN, UE8M0)
    nope = (y.float().unflatten(-1, (16, 32)) * s.unsqueeze(-1)).flatten(-2)
    return torch.cat([nope, q[..., 512:].float()], -1).to(q.dtype)


def _judge_ds32(ops, cid, args):
    spec = specs()["sparse_mla_decode"]
    ref = import_backend("dsport.backends.reference").ops["sparse_mla_decode"]
    seen = {**args, "q": _q_the_kernel_sees(args["q"])}
    bound = spec.bind(**seen)
    outs = ops["sparse_mla_decode"](**args)
    return judge(spec, bound, spec.validate(bound), outs, ref(**seen))


def test_ds32_adapter_is_contract_on_every_case_it_declares():
    cases = _ds32_cases()
    assert {"fp8-page64", "fp8-page1", "mtp-sq2", "B0", "poison-fp8-0xff"} <= {c for c, _ in cases}
    assert not {"fnuz-page64", "tiny-float", "float-576", "fp8-fp32-q"} & {c for c, _ in cases}  # declared out
    ops = D.make_ds32_ops(D.Ds32ContractModel("gfx950"), "gfx950")
    bad = {cid: j.reason for cid, args in cases if not (j := _judge_ds32(ops, cid, args)).ok}
    assert not bad, bad


@pytest.mark.parametrize("plant", ["q-fnuz", "scale-order", "e8m0-bias"])
def test_ds32_planted_slips_fail(plant):
    planted = {"q-fnuz": dict(q_format=E4M3FNUZ),  # q quantized in gfx942's flavour, read as fn: x2
               "scale-order": dict(scale_order=lambda s: s.repeat(1, 4)),  # tiles 0,1,2,3,0,1,.. instead of 0,0,0,0,1,..
               "e8m0-bias": dict(scale_order=lambda s: s.repeat_interleave(4, -1) * 2)}[plant]  # exponent one high
    ops = D.make_ds32_ops(D.Ds32ContractModel("gfx950"), "gfx950", **planted)
    cid, args = next((c, a) for c, a in _ds32_cases() if c == "fp8-page64")
    assert not _judge_ds32(ops, cid, args).ok


def test_ds32_is_refused_on_gfx942_and_checks_its_inputs():
    with pytest.raises(ConfigError, match="gfx950 only"):
        D.make_ds32_ops(D.Ds32ContractModel("gfx942"), "gfx942")
    with pytest.raises(AssertionError, match="only supported on gfx950"):  # as aiter's own assert
        D.Ds32ContractModel("gfx942").mla_decode_fwd_ds32(*[None] * 9, 1)
    assert D.e8m0_bytes(torch.tensor([1.0, 2.0 ** -20, 2.0 ** 30]), "s").tolist() == [127, 107, 157]
    with pytest.raises(ValueError, match="sparse_mla_decode: argument 's'"):
        D.e8m0_bytes(torch.tensor([0.75]), "s")  # a non-power-of-two scale has no E8M0 code: refused, not rounded
    # the schedule buffers come from get_mla_metadata_info_v1 in one order and go to get_mla_metadata_v1 in
    # another (work_info_set before work_indptr): the model rejects them swapped
    m = D.Ds32ContractModel("gfx950")
    bufs = [torch.empty(s, dtype=d) for s, d in m.get_mla_metadata_info_v1(2, 1, 16, E4M3FN.dtype, E4M3FN.dtype, False)]
    z = torch.zeros(3, dtype=torch.int32)
    m.get_mla_metadata_v1(z, z, z[:2], 16, 1, False, bufs[0], bufs[2], bufs[1], *bufs[3:])
    with pytest.raises(AssertionError, match="work_info_set"):
        m.get_mla_metadata_v1(z, z, z[:2], 16, 1, False, *bufs)


# ---- fused_moe's fp8 block-scaled path (quant_type per_1x128) --------------------------------
from dsport.backends.hip import aiter_moe_fp8 as F  # noqa: E402
from dsport.backends.reference import quant as RQ  # noqa: E402


def _fp8_experts(gen, t=6, d=256, inter=256, e=4, k=2):
    def w(*shape):
        x = torch.randn(*shape, generator=gen) * 0.05
        blocks = x.unflatten(-1, (-1, 128)).unflatten(-3, (-1, 128))  # [E, N/128, 128, K/128, 128]
        s = blocks.abs().amax((-3, -1)).clamp_min(1e-4) / 448  # DeepSeek's weight_scale_inv per 128x128 block
        q = (x / s.repeat_interleave(128, 1).repeat_interleave(128, 2)).to(E4M3FN.dtype)
        return q, s.float()
    (w1, s1), (w3, s3), (w2, s2) = w(e, inter, d), w(e, inter, d), w(e, d, inter)
    x = (torch.randn(t, d, generator=gen)).bfloat16()
    ids = torch.randint(0, e, (t, k), generator=gen).int()
    ids[0, 1] = -1  # a remote expert
    weights = torch.rand(t, k, generator=gen)
    weights[0, 1] = math.nan  # never read
    return dict(x=x, ids=ids, weights=weights, w1=w1, s1=s1, w3=w3, s3=s3, w2=w2, s2=s2)


def _fp8_experts_reference(a, act_fmt):
    """dsport's composition: each linear is act_quant(128, the arch's format, fp32 scales) then fp8_gemm."""
    def linear(x, w, s):
        xq, xs = quantize_groups(x.float(), 128, act_fmt, FP32)
        return RQ.fp8_gemm(xq, xs, w, s).float()
    y = torch.zeros(a["x"].shape, dtype=torch.float64)
    for t in range(a["x"].shape[0]):
        for j in range(a["ids"].shape[1]):
            e = int(a["ids"][t, j])
            if e < 0:
                continue
            xt = a["x"][t:t + 1]
            h = torch.nn.functional.silu(linear(xt, a["w1"][e], a["s1"][e])) * linear(xt, a["w3"][e], a["s3"][e])
            y[t] += float(a["weights"][t, j]) * linear(h, a["w2"][e], a["s2"][e])[0].double()
    return y


@pytest.mark.parametrize("target", ["gfx942", "gfx950"])
def test_fp8_experts_adapter_matches_dsports_composition(target):
    a = _fp8_experts(torch.Generator().manual_seed(11))
    model = F.Fp8MoeContractModel(target)
    got = F.make_fp8_ops(model, target)["moe_experts_fp8"](**a).double()
    want = _fp8_experts_reference(a, model.fp8)
    assert got.isfinite().all() and (got - want).abs().max() <= 1e-2 * want.abs().max(), (got - want).abs().max()


@pytest.mark.parametrize("plant", ["fn-bytes-unmapped", "up-gate-swapped"])
def test_fp8_experts_planted_slips_fail(plant):
    a = _fp8_experts(torch.Generator().manual_seed(11))
    model = F.Fp8MoeContractModel("gfx942")
    if plant == "fn-bytes-unmapped":  # fn weights relabelled as fnuz without the x2 on their scales
        ops = F.make_fp8_ops(model, "gfx942", to_arch=lambda x, f: (A.fn_bytes_as_fnuz(x), 1.0))
    else:
        a = {**a, "w1": a["w3"], "w3": a["w1"], "s1": a["s3"], "s3": a["s1"]}
        ops = F.make_fp8_ops(model, "gfx942")
    got = ops["moe_experts_fp8"](**a).double()
    want = _fp8_experts_reference(_fp8_experts(torch.Generator().manual_seed(11)), model.fp8)
    assert (got - want).abs().max() > 0.1 * want.abs().max()
