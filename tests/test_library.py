"""torch.ops.dsport: schemas and fake kernels derived from the specs, and a
block of dsport ops under torch.compile(fullgraph=True) on CPU."""
import pytest
import torch

import dsport
from dsport.core import library
from dsport.core.spec import specs



@pytest.fixture(scope="module")
def ops():
    return dsport.resolve("reference", torch_library=True)


def test_schemas_follow_the_specs():
    vmap = library.define()
    by_name = {v.name: v.schema() for vs in vmap.values() for v in vs}
    # Hand-written from SPEC/core.ops: format objects become str, optional tensors Tensor?.
    assert by_name["act_quant"] == 'act_quant(Tensor x, int block=128, str fmt="e4m3fn", str scale_fmt="ue8m0") -> (Tensor, Tensor)'
    assert by_name["topk_select"] == "topk_select(Tensor logits, int k, Tensor? ks=None, Tensor? ke=None) -> Tensor"
    # rms_norm's second output exists only with a residual: two ops, one arity each.
    assert by_name["rms_norm"] == "rms_norm(Tensor x, Tensor w, float eps=1e-06) -> Tensor"
    assert by_name["rms_norm_with_residual"] == "rms_norm_with_residual(Tensor x, Tensor w, Tensor residual, float eps=1e-06) -> (Tensor, Tensor)"
    # Every spec with a tensor argument is exposed; yarn_freqs (no tensor) is not.
    assert set(vmap) == {n for n, s in specs().items() if n != "yarn_freqs"}


# Every op the reference serves today (the set grows as references land),
# except yarn_freqs: no tensor argument, so no custom op.
SERVED = [op for op in dsport.resolve("reference").ops if op in library.define()]


@pytest.mark.parametrize("op", SERVED)
def test_fake_kernel_matches_the_real_output(ops, op):
    """The fake kernel promises the shapes the reference returns and the
    dtypes the custom op returns, on the first quick cases of each op."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    raw = dsport.resolve("reference", validate=False)
    cases = [c for c in specs()[op].cases() if "quick" in c.tags][:3]
    for case in cases:
        kw = case.inputs()
        real = getattr(ops, op)(**kw)
        plain = getattr(raw, op)(**case.inputs())
        real, plain = (real, plain) if isinstance(real, tuple) else ((real,), (plain,))
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = getattr(ops, op)(**{k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
        fake = fake if isinstance(fake, tuple) else (fake,)
        assert [tuple(t.shape) for t in fake] == [tuple(t.shape) for t in plain], case.id
        assert [t.dtype for t in fake] == [t.dtype for t in real], case.id
        assert all(isinstance(t, torch._subclasses.FakeTensor) for t in fake)  # the fake kernel ran, not the real one


def test_custom_ops_return_the_declared_dtypes(ops):
    """The reference computes dequant in float64; the custom op returns the spec's float32."""
    y = torch.full((2, 128), 2.0).to(torch.float8_e4m3fn)
    s = torch.tensor([[0.5], [4.0]])
    x = ops.dequant(y, s)
    assert x.dtype == torch.float32
    assert torch.equal(x, torch.tensor([[1.0] * 128, [8.0] * 128]))  # 2 * 0.5, 2 * 4 by hand


class Block(torch.nn.Module):
    """quantize -> dequantize -> scale: a small graph of dsport ops."""

    def __init__(self, table):
        super().__init__()
        self.t = table

    def forward(self, x):
        y, s = self.t.act_quant(x, fmt=dsport.E4M3FNUZ, scale_fmt="fp32")
        return self.t.dequant(y, s) * 0.5 + x


def test_block_compiles_fullgraph_and_matches_eager(ops):
    torch._dynamo.reset()
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(0))
    m = Block(ops)
    eager = m(x)
    compiled = torch.compile(m, fullgraph=True, backend=capture)(x)
    assert torch.equal(compiled, eager)
    assert len(graphs) == 1
    called = {str(n.target).removesuffix(".default") for n in graphs[0].graph.nodes if n.op == "call_function"}
    assert {"dsport.act_quant", "dsport.dequant"} <= called, called
    # aot_eager runs the fake kernels through AOT autograd's functionalization too.
    torch._dynamo.reset()
    again = torch.compile(m, fullgraph=True, backend="aot_eager")(x)
    assert torch.equal(again, eager)


def test_a_plain_python_op_would_not_be_a_dsport_node():
    """The node check above can fail: a graph over a plain function has no dsport node."""
    torch._dynamo.reset()
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    plain = dsport.resolve("reference", validate=False)
    torch.compile(lambda x: plain.act_quant(x)[1] * 2, fullgraph=True, backend=capture)(torch.randn(2, 128))
    called = {str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"}
    assert not any(c.startswith("dsport.") for c in called)


def test_register_replaces_the_previous_tables_kernels():
    """One kernel per op: the last registered table serves torch.ops.dsport."""
    calls = []

    def spy_dequant(y, s, block=128):
        calls.append(block)
        return y.float()

    from dsport.core.registry import OpTable

    library.register(OpTable({"dequant": spy_dequant}, {"dequant": "spy"}, []))
    try:
        torch.ops.dsport.dequant(torch.zeros(1, 128).to(torch.float8_e4m3fn), torch.ones(1, 1))
        assert calls == [128]
    finally:
        dsport.resolve("reference", torch_library=True)
    torch.ops.dsport.dequant(torch.zeros(1, 128).to(torch.float8_e4m3fn), torch.ones(1, 1))
    assert calls == [128]


def test_norm_rope_quant_block_compiles_fullgraph(ops):
    """rms_norm (with residual: the two-output variant) -> rope -> act_quant, as in an attention layer's q path."""
    needed = {"rms_norm", "rope", "act_quant", "yarn_freqs"}
    if not needed <= set(ops.ops):
        pytest.skip(f"the reference does not serve {sorted(needed - set(ops.ops))} yet")
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(1)
    T, H, D = 5, 2, 128
    x, res = torch.randn(T, H, D, generator=g), torch.randn(T, H, D, generator=g)
    w = torch.rand(D, generator=g) + 0.5
    pos = torch.arange(T, dtype=torch.int64)
    freqs = ops.yarn_freqs(dim=D).float()

    def block(x, res):
        h, new_res = ops.rms_norm(x, w, residual=res)
        q = ops.rope(h, pos, freqs, interleaved=True)
        y, s = ops.act_quant(q.reshape(T, H * D))
        return y.view(torch.uint8), s, new_res

    eager = block(x, res)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")(x, res)
    for e, c in zip(eager, compiled):
        assert torch.equal(e, c)
