"""TileLang kernels: the readable reference kernels of dsport.

One module per kernel. Each exposes ``OPS`` (the dsport ops it serves),
``program(profile, **static) -> PrimFunc`` (the tile program, written once
and lowered for a GPU or TileLang's CPU ``c`` target, see :mod:`.target`)
and ``build_configs(fp8)`` (the DeepSeek-V3.2 shapes an ahead-of-time build
lowers it for, in the FP8 format of the target).
"""
KERNELS: tuple[str, ...] = ("act_quant", "rms_norm", "fp8_gemm", "indexer_logits", "topk_select", "sparse_mla_prefill")
