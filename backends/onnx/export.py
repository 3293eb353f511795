"""Export the DeepSeek-V3.2 (or V3) prefill graph, or one decode step, to one ONNX file, dsport ops as ONNX local functions.

The model (``dsport.core.model``) is traced by torch's TorchScript ONNX
exporter on a *recording* op table: every dsport op the model calls runs on
the onnx backend, and the exact graph that op's session was built from
(:mod:`dsport.backends.onnx.runtime`) becomes a local function in the
``dsport`` domain (``dsport.rms_norm_0``, ``dsport.fp8_gemm_3``, ...), called
by a node of that name in the exported graph. The torch glue between ops
(embedding, the plain bf16/fp32 GEMMs, splits, cache writes) exports as
standard operators. A vendor toolchain can therefore swap a ``dsport``
function for its own fused kernel without touching the rest.

The model writes each cache through one view and keeps that view as the
cache (``core/model/layers.py``, ``write_rows``), so the tracer follows every
write to its reads: the indexer's keys select past ``index_topk``, and a
decode step (:func:`export_decode`) takes the latent and indexer caches as
graph inputs ``past.*`` and returns their written versions as ``present.*``.
Verification always runs a different prompt than the traced one, so a value
frozen at trace time shows.

FP8 weights stay FP8: parameters are exported as FLOAT8E4M3FN initializers,
their ``weight_scale_inv`` as float32 initializers, and the act_quant,
fp8_gemm and weight_dequant functions consume them. The graph is specialised
to one batch and prompt length, a decode step to one position and cache
capacity (the ops' graphs have static shapes).
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper

from . import runtime

log = logging.getLogger(__name__)
DOMAIN = "dsport"
_STASH: dict[int, tuple[tuple[torch.Tensor, ...], str, int]] = {}


class _DsportCall(torch.autograd.Function):
    """One dsport op call as one node: forward hands back the outputs the onnx backend already computed,
    symbolic emits ``dsport::<function>``."""

    @staticmethod
    def forward(ctx: Any, call: int, *tensors: torch.Tensor) -> Any:  # noqa: ARG004 - inputs are the node's inputs
        outs, _, _ = _STASH[call]
        return outs[0].clone() if len(outs) == 1 else tuple(o.clone() for o in outs)

    @staticmethod
    def symbolic(g: Any, call: int, *tensors: Any) -> Any:
        outs, fname, n_out = _STASH[call]
        vals = g.op(f"{DOMAIN}::{fname}", *tensors, outputs=n_out)
        for v, o in zip(vals if n_out > 1 else (vals,), outs):  # the node's output types, for torch's shape inference
            v.setType(torch._C.TensorType.create_from_tensor(o))
        return vals


class RecordingOps:
    """An op table that runs every op on the onnx backend and, while torch traces, records it as a node
    calling the ONNX function its session was built from."""

    def __init__(self) -> None:
        from .. import onnx as backend

        self._ops = backend.OPS
        self.functions: dict[str, onnx.GraphProto] = {}
        self._names: dict[tuple, str] = {}
        self.calls = 0

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        from ...core.spec import specs

        fn, spec = self._ops.get(name), specs()[name]

        def call(*args: Any, **kwargs: Any) -> Any:
            if not torch.jit.is_tracing():  # set-up outside the traced forward (the yarn table): a constant
                from .. import torch as torch_backend

                return (fn or torch_backend.OPS[name])(*args, **kwargs)
            if fn is None:
                raise NotImplementedError(f"export-onnx: the onnx backend does not serve {name}, which the traced graph calls")
            bound = spec.bind(*args, **kwargs)
            seen: list[tuple[tuple, runtime.Compiled]] = []
            runtime.RECORDER.watcher = lambda key, c: seen.append((key, c))
            # the op runs untraced (its shapes plain ints, its ORT call invisible); the node below stands for it
            state = torch._C._get_tracing_state()
            torch._C._set_tracing_state(None)
            try:
                out = fn(**bound)
            finally:
                torch._C._set_tracing_state(state)
                runtime.RECORDER.watcher = None
            (key, compiled), = seen
            fname = self._names.setdefault(key, f"{name}_{len(self._names)}")
            self.functions[fname] = compiled.model.graph
            outs = out if isinstance(out, tuple) else (out,)
            self.calls += 1
            _STASH[self.calls] = (outs, fname, len(outs))
            inputs = [bound[i] for i in compiled.inputs]
            res = _DsportCall.apply(self.calls, *inputs)
            return res

        return call


FP8_TYPES = (onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ)
# glue ops that only move elements: on float16 they move the same FP8 values (every e4m3fn/fnuz value is a
# float16 value, and the Cast back is exact), which ONNX allows where it has no FP8 kernel (Slice, ScatterND)
MOVES = {"Slice", "Gather", "GatherND", "GatherElements", "ScatterND", "ScatterElements", "Reshape", "Identity",
         "Concat", "Squeeze", "Unsqueeze", "Transpose", "Expand", "Flatten", "Split", "Where", "Index", "Select"}


# How every export (and its checks) builds the model: an FP8 indexer keeps its flat key cache, not the paged
# one, whose block slices the tracer specialises to the traced prompt's (empty at run time).
MODEL_OPTIONS = {"index_cache": "flat"}

def _widen_fp8_glue(graph: onnx.GraphProto, functions: dict[str, onnx.GraphProto]) -> int:
    """Let the glue between dsport functions move FP8 tensors: each FP8 input of a standard op is cast to
    float16 first, and each widened value is cast back to its FP8 type where a dsport function reads it.
    Returns the number of Casts inserted."""
    fp8: dict[str, int] = {t.name: t.data_type for t in graph.initializer if t.data_type in FP8_TYPES}
    fp8.update({i.name: i.type.tensor_type.elem_type for i in graph.input if i.type.tensor_type.elem_type in FP8_TYPES})
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].t.data_type in FP8_TYPES:
            fp8[n.output[0]] = n.attribute[0].t.data_type
        if n.domain == DOMAIN:
            for o, vi in zip(n.output, functions[n.op_type].output):
                if vi.type.tensor_type.elem_type in FP8_TYPES:
                    fp8[o] = vi.type.tensor_type.elem_type
    wide: dict[str, int] = {}
    nodes: list[onnx.NodeProto] = []
    casts = 0
    for n in graph.node:
        if n.domain == DOMAIN:
            for i, x in enumerate(n.input):
                if x in wide:
                    y = f"{x}__fp8"
                    nodes.append(helper.make_node("Cast", [x], [y], to=wide[x], saturate=1))
                    n.input[i], casts = y, casts + 1
        elif any(x in fp8 or x in wide for x in n.input):
            kind = None
            for i, x in enumerate(n.input):
                if x in fp8:
                    y = f"{x}__f16"
                    nodes.append(helper.make_node("Cast", [x], [y], to=onnx.TensorProto.FLOAT16))
                    kind, n.input[i], casts = fp8[x], y, casts + 1
                elif x in wide:
                    kind = wide[x]
            if n.op_type in MOVES and kind is not None:
                for o in n.output:
                    wide[o] = kind
        nodes.append(n)
    for o in graph.output:  # an FP8 graph output (a decode step's written FP8 cache) computed wide: cast it back
        if o.name in wide:
            y = f"{o.name}__f16"
            for n in nodes:
                n.output[:] = [y if v == o.name else v for v in n.output]
                n.input[:] = [y if v == o.name else v for v in n.input]
            nodes.append(helper.make_node("Cast", [y], [o.name], to=wide[o.name], saturate=1))
            casts += 1
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # the exporter's type hints still say FP8 for the widened values
    return casts


def _function(name: str, graph: onnx.GraphProto, opset: int) -> onnx.FunctionProto:
    consts = [helper.make_node("Constant", [], [t.name], value=t) for t in graph.initializer]
    return helper.make_function(DOMAIN, name, [i.name for i in graph.input], [o.name for o in graph.output],
                                consts + list(graph.node), opset_imports=[helper.make_opsetid("", opset)])


@dataclass
class ExportResult:
    path: Path
    seconds: float
    bytes: int
    functions: int
    calls: int
    opset: int


TRACE_SEED = 0
"""The prompt traced at export; verification uses other seeds, so a value baked in at trace time shows."""


def prompt(vocab: int, seq: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(seed))


class _Prefill(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # Model.forward runs under inference_mode, which tracing cannot see through: call the undecorated body
        return type(self.model).forward.__wrapped__(self.model, tokens)


def cache_slots(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, str]]:
    """Every cache tensor of ``model`` as (graph name, owning module, attribute), in graph input order."""
    slots = []
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        slots.append((f"{i}.kv_cache", attn, "kv_cache"))
        if attn.indexer is not None:
            slots.append((f"{i}.index_k_cache", attn.indexer, "k_cache"))
            if attn.indexer.k_scale is not None:
                slots.append((f"{i}.index_k_scale", attn.indexer, "k_scale"))
    return slots


def caches_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's caches by graph name (copies: the model writes its own in place)."""
    return {name: getattr(owner, attr).clone() for name, owner, attr in cache_slots(model)}


class _Decode(torch.nn.Module):
    """One decode step at position ``start``: the caches come in as inputs and their written versions go out."""

    def __init__(self, model: torch.nn.Module, start: int):
        super().__init__()
        self.model, self.start = model, start

    def forward(self, tokens: torch.Tensor, *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        slots = cache_slots(self.model)
        for (_, owner, attr), c in zip(slots, caches):
            setattr(owner, attr, c)
        logits = type(self.model).forward.__wrapped__(self.model, tokens, self.start)
        # the layers keep the view they wrote through as the cache (core/model/layers.py), so these are the written values
        return (logits, *(getattr(owner, attr) for _, owner, attr in slots))


@contextlib.contextmanager
def _fp8_scalar_names() -> Any:
    """The TorchScript exporter's type table spells FP8 as ``Float8E4M3FN`` but a traced value's scalar type
    says ``Float8_e4m3fn``; the index_put of an FP8 cache row looks its type up by the latter. Both spellings
    are accepted while exporting."""
    from torch.onnx._internal.torchscript_exporter import _type_utils as tu

    table = tu._SCALAR_NAME_TO_TYPE
    added = {k: v for k, v in (("Float8_e4m3fn", tu.JitScalarType.FLOAT8E4M3FN),
                               ("Float8_e4m3fnuz", tu.JitScalarType.FLOAT8E4M3FNUZ)) if k not in table}
    table.update(added)
    try:
        yield
    finally:
        for k in added:
            table.pop(k, None)


def _write(module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: Path, input_names: list[str],
           output_names: list[str], rec: RecordingOps, external_data: bool, t0: float) -> ExportResult:
    """Trace ``module`` on ``args``, add the recorded dsport functions, widen the FP8 glue, save and check."""
    opset = runtime.SETTINGS.opset
    with torch.no_grad(), warnings.catch_warnings(), _fp8_scalar_names():
        # the tracer warns about every Python-level branch on a shape; the graph is specialised to them on purpose
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, args, str(out), dynamo=False, opset_version=min(opset, 20),
                          input_names=input_names, output_names=output_names, custom_opsets={DOMAIN: 1},
                          do_constant_folding=False)
    m = onnx.load(str(out))
    for imp in m.opset_import:  # the glue was written at the exporter's newest opset; the functions need `opset`
        if imp.domain in ("", "ai.onnx"):
            imp.version = max(imp.version, opset)
    used = {n.op_type for n in m.graph.node if n.domain == DOMAIN}  # calls whose outputs nothing reads are gone
    m.functions.extend(_function(n, g, opset) for n, g in rec.functions.items() if n in used)
    _widen_fp8_glue(m.graph, rec.functions)
    onnx.save(m, str(out), save_as_external_data=external_data, location=out.name + ".data" if external_data else None)
    onnx.checker.check_model(str(out), full_check=True)
    size = out.stat().st_size + (out.with_name(out.name + ".data").stat().st_size if external_data else 0)
    calls = sum(n.domain == DOMAIN for n in m.graph.node)
    return ExportResult(out, time.perf_counter() - t0, size, len(used), calls, opset)


def export_prefill(checkpoint: str | Path, out: str | Path, seq: int = 16, external_data: bool = False) -> ExportResult:
    """Write the prefill graph of ``checkpoint`` for a [1, seq] prompt to ``out``; check it with onnx.checker."""
    from ...core.model import Model
    from ...core.model.config import load_config

    cfg = load_config(checkpoint)
    t0 = time.perf_counter()
    rec = RecordingOps()
    # the flat FP8 indexer cache: the paged one is read back by block slices the tracer specialises to empty
    model = Model.from_pretrained(checkpoint, ops=rec, dtype=torch.float32, **MODEL_OPTIONS)  # type: ignore[arg-type]
    tokens = prompt(cfg.vocab_size, seq, TRACE_SEED)
    model.reset(1, seq)  # caches allocated before tracing: the traced prefill writes into them as constants
    return _write(_Prefill(model), (tokens,), Path(out), ["tokens"], ["logits"], rec, external_data, t0)


def decode_capacity(seq: int) -> int:
    """The cache capacity of a decode graph after a ``seq``-token prefill (the model rounds it to whole blocks)."""
    from ...core.model.layers import MLA

    return -(-(seq + 1) // MLA.BLOCK_SIZE) * MLA.BLOCK_SIZE


def export_decode(checkpoint: str | Path, out: str | Path, seq: int = 16, external_data: bool = False) -> ExportResult:
    """Write one decode step of ``checkpoint`` to ``out``: the token at position ``seq`` (after a ``seq``-token
    prefill), the caches as inputs ``past.<layer>.<cache>`` and their written versions as outputs
    ``present.<layer>.<cache>``, beside ``logits`` [1, 1, vocab]."""
    from ...core.model import Model
    from ...core.model.config import load_config

    cfg = load_config(checkpoint)
    t0 = time.perf_counter()
    rec = RecordingOps()
    model = Model.from_pretrained(checkpoint, ops=rec, dtype=torch.float32, **MODEL_OPTIONS)  # type: ignore[arg-type]
    # empty caches to trace on: no value of theirs shapes the graph, and weights dequantized once per cache
    # allocation (kv_b, the expert stacks) are then dequantized inside the trace, from their FP8 initializers
    model.reset(1, decode_capacity(seq))
    caches = caches_of(model)
    token = prompt(cfg.vocab_size, 1, TRACE_SEED + 100)
    names = list(caches)
    return _write(_Decode(model, seq), (token, *caches.values()), Path(out), ["tokens", *(f"past.{n}" for n in names)],
                  ["logits", *(f"present.{n}" for n in names)], rec, external_data, t0)


def session(path: str | Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), runtime.session_options(), providers=list(runtime.SETTINGS.providers))


def run_exported(path: str | Path, tokens: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(session(path).run(["logits"], {"tokens": tokens.numpy().astype(np.int64)})[0])


def run_exported_decode(path: str | Path, token: torch.Tensor, caches: dict[str, torch.Tensor]
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One step of an exported decode graph: (logits [1, 1, vocab], the written caches by name). The caches are
    bound by pointer in their own dtypes (FP8 included, which numpy lacks)."""
    sess = session(path)
    io = sess.io_binding()
    inputs = {"tokens": token.to(torch.int64).contiguous(), **{f"past.{n}": c.contiguous() for n, c in caches.items()}}
    for name, t in inputs.items():
        io.bind_input(name, "cpu", 0, runtime.elem_of(t), list(t.shape), t.data_ptr())
    vocab = sess.get_outputs()[0].shape[-1]
    outs = {"logits": torch.empty(1, 1, vocab, dtype=torch.float32), **{f"present.{n}": torch.empty_like(c) for n, c in caches.items()}}
    for name, t in outs.items():
        io.bind_output(name, "cpu", 0, runtime.elem_of(t), list(t.shape), t.data_ptr())
    sess.run_with_iobinding(io)
    return outs["logits"], {n: outs[f"present.{n}"] for n in caches}


def decode_after_prefill(checkpoint: str | Path, tokens: torch.Tensor, token: torch.Tensor, ops: Any = None
                         ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
    """Prefill ``tokens`` [1, seq], then decode ``token`` [1, 1] on the torch backend (or the op table ``ops``):
    (the caches after the prefill, the decode logits, the caches after the decode)."""
    from ...core.model import Model

    model = Model.from_pretrained(checkpoint, backend="torch", ops=ops, dtype=torch.float32, **MODEL_OPTIONS)
    seq = tokens.shape[1]
    model.reset(1, decode_capacity(seq))
    model(tokens)
    before = caches_of(model)
    logits = model(token, seq)
    return before, logits, caches_of(model)


def torch_logits(checkpoint: str | Path, tokens: torch.Tensor) -> torch.Tensor:
    from ...core.model import Model

    return Model.from_pretrained(checkpoint, backend="torch", dtype=torch.float32, **MODEL_OPTIONS)(tokens)


def eager_onnx_ops() -> Any:
    """The onnx backend's op table (the graphs the export's functions hold)."""
    from ...core.registry import resolve

    return resolve({"backend": "onnx", "fallback": "fallback", "dtype": "float32"})


def eager_onnx_logits(checkpoint: str | Path, tokens: torch.Tensor) -> torch.Tensor:
    """The same model run eagerly on the onnx backend's op table (the graphs the export's functions hold)."""
    from ...core.model import Model

    return Model.from_pretrained(checkpoint, ops=eager_onnx_ops(), dtype=torch.float32, **MODEL_OPTIONS)(tokens)


def cache_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two caches as flat float vectors (FP8 codes by their values); 1 for two all-zero caches."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    if not a.any() and not b.any():
        return 1.0
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def per_position_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double().reshape(-1, a.shape[-1]), b.double().reshape(-1, b.shape[-1]), dim=-1)
