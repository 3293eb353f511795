"""Ascend NPU adapters and kernels.

Empty so far: on Ascend, the ``torch`` backend runs through torch_npu (it is
device-agnostic), and a dedicated op table starts from
``dsport new-backend npu``. Check each vendor kernel's cache layout against
the specs: AMD's aiter paged indexer, for one, stores keys per token
([128 fp8 | 4 B scale]), not per block as ``index_cache_pack`` does.
"""
