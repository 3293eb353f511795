"""ONNX graphs built from standard operators, and the ONNX Runtime sessions that run them.

Every op of the backend is a function ``build(g, ...)`` that emits standard
ONNX nodes into a :class:`Graph` for one set of static shapes, dtypes and
attributes. :func:`run` builds that graph once per key, checks it with
``onnx.checker``, turns it into an ``InferenceSession`` and caches it; later
calls with the same key bind the torch tensors' memory directly (I/O
binding) and run. Torch tensors cross the boundary without copies and in
their own dtypes (bf16, float8e4m3fn/fnuz included), so every cast the op
makes — the FP8 saturation, the bf16 rounding of an output — happens inside
ONNX Runtime, not in torch.

The opset, the execution providers and ORT's intra-op threads are the
backend's options (:mod:`options`): the config file's ``onnx:`` section,
handed over by the registry when a config is resolved, each overridden by its
environment variable (``DSPORT_ONNX_OPSET``, ``DSPORT_ONNX_PROVIDERS`` as a
comma list, ``DSPORT_ONNX_THREADS``). At import the defaults and the
environment apply; :func:`configure` changes them (and drops the cached
sessions when they change).
"""
from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger(__name__)

from ...core.backend import option_values
from ...core.errors import ConfigError
from .options import MIN_OPSET, OPTIONS

TORCH_TO_ONNX: dict[torch.dtype, int] = {
    torch.float32: TensorProto.FLOAT, torch.float64: TensorProto.DOUBLE, torch.float16: TensorProto.FLOAT16,
    torch.bfloat16: TensorProto.BFLOAT16, torch.int32: TensorProto.INT32, torch.int64: TensorProto.INT64,
    torch.uint8: TensorProto.UINT8, torch.int8: TensorProto.INT8, torch.bool: TensorProto.BOOL,
    torch.float8_e4m3fn: TensorProto.FLOAT8E4M3FN, torch.float8_e4m3fnuz: TensorProto.FLOAT8E4M3FNUZ,
}
FLOAT, DOUBLE, INT64, INT32, BOOL, BF16 = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64,
                                           TensorProto.INT32, TensorProto.BOOL, TensorProto.BFLOAT16)


@dataclass(frozen=True)
class Settings:
    opset: int = 21
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 0  # ORT intra-op threads per session; 0: torch's count


def _from_env() -> tuple[Settings, str | None]:
    """The defaults and the environment, and why they are unusable (reported by ``available()``, never raised)."""
    try:
        v = option_values(OPTIONS)
    except ConfigError as e:
        return Settings(), str(e)
    return Settings(v["opset"], tuple(v["providers"]), v["threads"]), None


SETTINGS, SETTINGS_ERROR = _from_env()
_SESSIONS: dict[tuple, Compiled] = {}
_LOCK = threading.Lock()


def configure(opset: int | None = None, providers: Sequence[str] | None = None, threads: int | None = None) -> Settings:
    """Change the opset, providers or threads; sessions built for other settings are dropped."""
    global SETTINGS, SETTINGS_ERROR
    if opset is not None and opset < MIN_OPSET:
        raise ValueError(f"onnx backend: opset {opset} is below {MIN_OPSET}, the first with saturating FP8 casts in every op used")
    new = Settings(opset if opset is not None else SETTINGS.opset,
                   tuple(providers) if providers is not None else SETTINGS.providers,
                   threads if threads is not None else SETTINGS.threads)
    if new != SETTINGS:
        _SESSIONS.clear()
    SETTINGS, SETTINGS_ERROR = new, None
    return SETTINGS


class Graph:
    """A small builder over ``onnx.helper``: ``g.MatMul(a, b)`` appends a node and returns its output name.

    Values are names (str). Python numbers and numpy arrays passed where a
    value is expected become initializers (``g.const``)."""

    def __init__(self, name: str):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._ids = itertools.count()

    def fresh(self, hint: str = "v") -> str:
        return f"{hint}_{next(self._ids)}"

    def input(self, name: str, elem: int, shape: Sequence[int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def output(self, value: str, name: str, elem: int, shape: Sequence[int]) -> None:
        self.nodes.append(helper.make_node("Identity", [value], [name]))
        self.outputs.append(helper.make_tensor_value_info(name, elem, list(shape)))

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        arr = np.asarray(value, dtype=dtype)
        name = self.fresh("c")
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def i64(self, *values: int) -> str:
        """A 1-D int64 constant (shapes, axes, starts)."""
        return self.const(list(values), np.int64)

    def node(self, op: str, inputs: Sequence[Any], n_out: int = 1, **attrs: Any) -> str | tuple[str, ...]:
        names = [self._value(v) for v in inputs]
        outs = [self.fresh(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, names, outs, **attrs))
        return outs[0] if n_out == 1 else tuple(outs)

    def _value(self, v: Any) -> str:
        if v is None or isinstance(v, str):
            return "" if v is None else v
        if isinstance(v, np.generic):  # before the Python types: np.float64 is a subclass of float
            return self.const(v, v.dtype)
        if isinstance(v, (bool, int, float)):
            return self.const(v, np.int64 if isinstance(v, int) and not isinstance(v, bool) else np.float32)
        return self.const(v, np.asarray(v).dtype)

    def __getattr__(self, op: str) -> Callable[..., Any]:
        if not op[:1].isupper():
            raise AttributeError(op)
        return lambda *inputs, n_out=1, **attrs: self.node(op, inputs, n_out, **attrs)

    def model(self, opset: int) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="dsport", ir_version=10)
        # the structural check; ORT's session creation type-checks every node again, so the strict shape
        # inference of full_check (a second pass over every graph of the quick set) is left to the exporter
        onnx.checker.check_model(m)
        return m


@dataclass
class Compiled:
    """One session and the static signature it was built for."""

    session: ort.InferenceSession
    inputs: tuple[str, ...]
    outputs: tuple[tuple[str, torch.dtype, tuple[int, ...]], ...]
    model: onnx.ModelProto

    def __call__(self, **tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run with the graph inputs given by name; returns the outputs in declaration order."""
        if set(tensors) != set(self.inputs):
            raise TypeError(f"onnx session takes inputs {list(self.inputs)}, got {sorted(tensors)}")
        io = self.session.io_binding()
        keep = []  # contiguous copies must outlive the run
        for name in self.inputs:
            t = tensors[name].detach().contiguous()
            keep.append(t)
            elem = TORCH_TO_ONNX[t.dtype]
            if t.numel() == 0:  # an empty tensor may have no buffer to bind: hand ORT an empty value of its own
                io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_shape_and_type(list(t.shape), elem))
            else:
                io.bind_input(name, "cpu", 0, elem, list(t.shape), t.data_ptr())
        outs = []
        for name, dtype, shape in self.outputs:
            o = torch.empty(shape, dtype=dtype)
            outs.append(o)
            if o.numel() == 0:
                io.bind_output(name, "cpu")
            else:
                io.bind_output(name, "cpu", 0, TORCH_TO_ONNX[dtype], list(shape), o.data_ptr())
        self.session.run_with_iobinding(io)
        return tuple(outs)


def session_options() -> ort.SessionOptions:
    """ORT runs inside a torch process here (the model's glue, the other backends): its intra-op pool gets
    torch's thread count and does not spin-wait after a run, which would steal the cores torch runs on next."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = SETTINGS.threads or torch.get_num_threads()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def compile_graph(g: Graph, outputs: Sequence[tuple[str, torch.dtype, tuple[int, ...]]]) -> Compiled:
    s = SETTINGS
    m = g.model(s.opset)
    sess = ort.InferenceSession(m.SerializeToString(), session_options(), providers=list(s.providers))
    return Compiled(sess, tuple(i.name for i in g.inputs), tuple(outputs), m)


def signature(*tensors: torch.Tensor | None) -> tuple:
    """The static part of a call: shape and dtype of each tensor (None stays None)."""
    return tuple(None if t is None else (tuple(t.shape), t.dtype) for t in tensors)


class _Recorder(threading.local):
    """Hands each session an op uses to a watcher (the exporter), per thread."""

    watcher: Callable[[tuple, Compiled], None] | None = None


RECORDER = _Recorder()


def cached(key: tuple, build: Callable[[], Compiled]) -> Compiled:
    """The session for ``key`` (op, signature, attributes), built on first use."""
    c = _lookup(key, build)
    if RECORDER.watcher is not None:
        RECORDER.watcher(key, c)
    return c


def _lookup(key: tuple, build: Callable[[], Compiled]) -> Compiled:
    c = _SESSIONS.get(key)
    if c is None:
        with _LOCK:
            c = _SESSIONS.get(key)
            if c is None:
                c = build()
                _SESSIONS[key] = c
                log.debug("onnx: built session %s (%d cached)", key[0], len(_SESSIONS))
    return c


def session_count() -> int:
    return len(_SESSIONS)


def to_float(g: Graph, x: str, elem: int) -> str:
    """Widen to float32 (exact from bf16, fp16 and FP8); float64 is rounded once, as the spec's fp32 math does."""
    return x if elem == FLOAT else g.Cast(x, to=FLOAT)


def elem_of(t: torch.Tensor | torch.dtype) -> int:
    return TORCH_TO_ONNX[t if isinstance(t, torch.dtype) else t.dtype]
