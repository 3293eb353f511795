"""The device a conformance run executes on (``dsport conformance --device DEV``).

Cases are still generated from their seeds on the CPU and the reference still
runs there; only the backend's call moves. :func:`resolve` turns the user's
device string into a :class:`RunDevice` before anything runs, refusing a device
torch does not know (a usage error) or one this machine lacks (with the reason:
no CUDA build, no visible device, too few devices), so an absent GPU never turns
into a silent CPU run. :func:`to_device` moves a case's inputs keeping each
tensor's storage offset and strides (a strided, poisoned view stays a strided,
poisoned view: :mod:`dsport.core.ops.hostile`), and inputs that share storage on
the CPU share it on the device too.
"""
from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..core.errors import DsportError


class DeviceAbsent(DsportError, RuntimeError):
    """The device string is valid but this machine has no such device."""


@dataclass(frozen=True)
class RunDevice:
    """Where a backend's calls executed: torch's device string and the chip's name."""

    torch: str
    name: str

    def to_json(self) -> dict[str, str]:
        return {"torch": self.torch, "name": self.name}

    @property
    def device(self) -> torch.device:
        return torch.device(self.torch)


def _accelerator_module(kind: str) -> Any:
    if kind == "npu":
        try:
            import torch_npu  # noqa: F401  (registers torch.npu)
        except ImportError as e:
            raise DeviceAbsent(f"torch has no NPU device here: torch_npu does not import ({e})") from None
    return getattr(torch, kind, None)


def _why_absent(kind: str) -> str:
    if kind == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            return f"torch {torch.__version__} is built without CUDA or ROCm"
        built = f"CUDA {torch.version.cuda}" if torch.version.cuda else f"ROCm {torch.version.hip}"
        return (f"torch.cuda.is_available() is False (torch {torch.__version__} built for {built}; "
                "no driver or no visible device, see CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES)")
    return f"torch.{kind}.is_available() is False"


def resolve(text: str) -> RunDevice:
    """The device named by ``--device``; raises ConfigError for a string torch does not
    know and DeviceAbsent when this machine has no such device."""
    from ..core.errors import ConfigError

    kind = text.split(":", 1)[0].strip().lower()
    api = _accelerator_module(kind)  # before torch.device: 'npu' parses only once torch_npu is imported
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"--device: {text!r} is not a torch device string ({str(e).splitlines()[0]}); "
                          "expected e.g. cpu, cuda, cuda:1, npu:0") from None
    if dev.type == "cpu":
        return RunDevice("cpu", platform.processor() or platform.machine())
    if api is None or not hasattr(api, "is_available") or not hasattr(api, "device_count"):
        raise ConfigError(f"--device: {text!r}: conformance runs on cpu, cuda (ROCm included) or npu devices, "
                          f"not {dev.type} (its tensors cannot be judged or torch has no device API for it)")
    label = dev.type.upper()
    if not api.is_available():
        raise DeviceAbsent(f"torch has no {label} device here: {_why_absent(dev.type)}")
    count = int(api.device_count())
    index = dev.index if dev.index is not None else int(api.current_device())
    if index >= count:
        raise DeviceAbsent(f"torch has no {label} device {text!r} here: {count} visible ({dev.type}:0..{dev.type}:{count - 1})")
    named = getattr(api, "get_device_name", None)
    return RunDevice(f"{dev.type}:{index}", str(named(index)) if named else dev.type)


def to_device(t: torch.Tensor, device: torch.device, shared: dict[tuple[int, int], torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, str | None]:
    """``t`` on ``device`` with the same storage offset, sizes and strides, and what could not be kept
    (None when the layout is exact). The whole storage travels, padding included, so memory a kernel
    must not read holds the same poison on the device. ``shared`` maps a CPU storage to its device copy."""
    storage = t.untyped_storage()
    nbytes, size = storage.nbytes(), t.element_size()
    if nbytes % size:
        return t.detach().to(device, copy=True).contiguous(), \
            f"storage of {nbytes} bytes is no whole number of {t.dtype} elements: moved as a contiguous copy"
    key = (storage.data_ptr(), nbytes)
    buf = None if shared is None else shared.get(key)
    if buf is None:
        host = torch.empty(0, dtype=torch.uint8).set_(storage)
        buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        buf.copy_(host)
        if shared is not None:
            shared[key] = buf
    moved = buf.view(t.dtype) if t.dtype != torch.uint8 else buf
    return moved.as_strided(t.shape, t.stride(), t.storage_offset()), None


def inputs_on(args: Mapping[str, Any], device: torch.device) -> tuple[dict[str, Any], list[str]]:
    """A case's arguments with every tensor moved by :func:`to_device`; notes name any argument whose layout changed."""
    shared: dict[tuple[int, int], torch.Tensor] = {}
    out, notes = {}, []
    for k, v in args.items():
        if isinstance(v, torch.Tensor):
            v, note = to_device(v, device, shared)
            if note:
                notes.append(f"input '{k}': {note}")
        out[k] = v
    return out, notes


def stray_outputs(outs: tuple, device: torch.device, names: list[str]) -> str:
    """Why the outputs are not where the inputs were ('' when every tensor output is on ``device``)."""
    why = [f"output '{names[i] if i < len(names) else i}' came back on {o.device}, the inputs were on {device}"
           for i, o in enumerate(outs) if isinstance(o, torch.Tensor) and not _same(o.device, device)]
    return "; ".join(why)


def _same(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a kernel's fault is raised inside the backend's call and its
    time is the call's own (accelerator launches return before the kernel ends)."""
    api = getattr(torch, device.type, None) if device.type != "cpu" else None
    if api is not None and hasattr(api, "synchronize"):
        api.synchronize(device)


def to_cpu(x: Any) -> Any:
    """A tensor (or a tuple / dict of them) on the CPU, for the judge."""
    if isinstance(x, torch.Tensor):
        return x.cpu()
    if isinstance(x, tuple):
        return tuple(to_cpu(v) for v in x)
    if isinstance(x, dict):
        return {k: to_cpu(v) for k, v in x.items()}
    return x
