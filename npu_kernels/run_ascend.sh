#!/usr/bin/env bash
# Conformance, Ascend-only checks and profile of the npu backend on an Ascend host
# (CANN + torch_npu installed, dsport installed with `pip install -e .[test]`).
# Everything lands as JSON (and Markdown) under OUT; nothing here runs without an NPU.
#
#   bash npu_kernels/run_ascend.sh [OUT]        # OUT defaults to ./ascend-run
set -euo pipefail
OUT="${1:-ascend-run}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
DSPORT="${DSPORT:-dsport}"
status=0

# 0. the machine: torch_npu must import and see a device, or every row below would be 'contract'
"$PY" -c "import torch, torch_npu, json, sys; n = torch.npu.device_count(); \
json.dump({'torch': torch.__version__, 'torch_npu': torch_npu.__version__, 'devices': n, \
'name': torch.npu.get_device_name(0) if n else None}, sys.stdout)" > "$OUT/machine.json"
"$DSPORT" backends > "$OUT/backends.txt"
grep -Eq "^│ npu +│[^│]+│ yes" "$OUT/backends.txt" || { echo "npu backend not available here; see $OUT/backends.txt" >&2; exit 2; }

# 1. the adapters' calls against the installed torch_npu's registered schemas
"$PY" -m dsport.npu_kernels.ascend_checks schemas --installed --json "$OUT/schemas.json" || status=1

# 2. conformance on the NPU: quick set for npu and the torch fallback, then every case of the served ops
"$DSPORT" conformance --backends npu torch --quick --json "$OUT/conformance-quick.json" \
    --markdown "$OUT/conformance-quick.md" --no-progress || status=1
"$DSPORT" conformance --backends npu --full --ops 'sparse_mla_*' rms_norm rope 'moe_*' --json "$OUT/conformance-full.json" \
    --markdown "$OUT/conformance-full.md" --no-progress || status=1

# 3. the fused lightning indexer (not a spec op of its own) against dsport's indexer + top-k
"$PY" -m dsport.npu_kernels.ascend_checks fused-indexer --lib torch_npu --json "$OUT/fused-indexer.json" || status=1

# 4. profile: npu against the torch backend on the same device, DeepSeek-sized shapes
"$DSPORT" profile --backend npu,torch --ops sparse_mla_prefill,sparse_mla_decode,rms_norm,rope,moe_gate,moe_experts,moe_grouped_gemm_contiguous,moe_grouped_gemm_masked --device npu \
    --scale device --json "$OUT/profile.json" --markdown "$OUT/profile.md" || status=1

echo "results in $OUT (exit $status)"
exit $status
