"""A deliberately wrong backend for the profiler's accuracy gate: its rms_norm
skips the normalization (much less work, so it would look fast) and its
topk_select is the torch backend's own (correct). The gate must show
rms_norm as failed with no speed figure, and still time topk_select."""
from dsport.backends import torch as torch_backend

NAME = "wrong"
DESCRIPTION = "planted bug: rms_norm returns w * x without the rsqrt(mean(x^2)) factor"


def rms_norm(x, w, eps=1e-6, residual=None):
    if residual is not None:
        x = x + residual
        return (x * w).to(x.dtype), x
    return (x * w).to(x.dtype)


OPS = {"rms_norm": rms_norm, "topk_select": torch_backend.OPS["topk_select"]}


def available():
    return True, "test backend"
