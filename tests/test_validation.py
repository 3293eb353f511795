"""Every validation error names the op and the argument, what was expected and what was given."""
import pytest
import torch

import dsport
from named_errors import check_named_error

ref = dsport.resolve("reference")


@pytest.mark.parametrize("call, op, arg, fragment", [
    (lambda: ref.act_quant(torch.randn(2, 100)), "act_quant", "x", "N divisible by block"),
    (lambda: ref.act_quant(torch.randn(2, 128), fmt="e5m2"), "act_quant", "fmt", "e4m3fn"),
    (lambda: ref.act_quant(torch.randn(2, 128), scale_fmt="ue4m3"), "act_quant", "scale_fmt", "ue8m0"),
    (lambda: ref.act_quant(torch.randn(2, 128).int()), "act_quant", "x", "dtype"),
    (lambda: ref.act_quant([1.0] * 128), "act_quant", "x", "torch.Tensor"),
    (lambda: ref.dequant(torch.zeros(2, 256).to(torch.float8_e4m3fn), torch.ones(2, 3)), "dequant", "s", "N // block"),
    (lambda: ref.fp8_gemm(torch.zeros(2, 256).to(torch.float8_e4m3fn), torch.ones(2, 2),
                          torch.zeros(4, 256).to(torch.float8_e4m3fnuz), torch.ones(1, 2)), "fp8_gemm", "b", "same fp8 dtype"),
    (lambda: ref.fp8_gemm(torch.zeros(2, 256).to(torch.float8_e4m3fn), torch.ones(2, 2),
                          torch.zeros(4, 128).to(torch.float8_e4m3fn), torch.ones(1, 1)), "fp8_gemm", "b", "shape"),
    (lambda: ref.act_quant(torch.randn(2, 128), blok=128), "act_quant", "(call)", "signature"),
])
def test_error_names_op_and_argument(call, op, arg, fragment):
    check_named_error(call, op, arg, fragment)
