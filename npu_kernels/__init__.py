"""Ascend NPU support: dsport's ops over torch_npu's fused kernels.

* ``layouts``: translation between dsport's layouts and the NPU's, each op with its inverse;
* ``adapters``: the op table over torch_npu (or over the contract models);
* ``contract_models``: torch models of the torch_npu ops called, sources cited;
* ``schema``: torch_npu's registered schemas read from its wheel, and a call checker;
* ``ascend_checks`` / ``run_ascend.sh``: what to run on Ascend hardware.
"""
