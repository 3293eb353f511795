"""A deliberately wrong backend for the profiler's accuracy gate: its rms_norm
skips the normalization (much less work, so it would look fast) and its
topk_select is the torch backend's own (correct); its hadamard is right on
small inputs but writes a NaN when a call has more than 4 tokens, which the
reduced accuracy check never sees. The gate must show rms_norm (both phases)
and hadamard at the 16-token prefill shape as failed with no speed figure,
and still time topk_select and the 4-token decode hadamard."""
from dsport.backends import torch as torch_backend

NAME = "wrong"
DESCRIPTION = "planted bug: rms_norm returns w * x without the rsqrt(mean(x^2)) factor"


def rms_norm(x, w, eps=1e-6, residual=None):
    if residual is not None:
        x = x + residual
        return (x * w).to(x.dtype), x
    return (x * w).to(x.dtype)


def hadamard(x):
    y = torch_backend.OPS["hadamard"](x)
    if x.shape[0] > 4:
        y = y.clone()
        y.view(-1)[0] = float("nan")
    return y


OPS = {"rms_norm": rms_norm, "topk_select": torch_backend.OPS["topk_select"], "hadamard": hadamard}


def available():
    return True, "test backend"
