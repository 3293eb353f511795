#!/usr/bin/env bash
# What dsport can execute on an H200 machine without network access, bounded to about
# 8 minutes: install from the working tree (no dependencies: the machine's torch, triton,
# numpy, pyyaml, rich and safetensors serve), list backends, op conformance on the GPU
# (`dsport conformance --device cuda`), the profiler on the GPU. Run it from the project
# root:  bash cuda_kernels/h200-check.sh   Result files go to $OUT, default ./device-out;
# logs go to /tmp and their tails to stdout.
# The cuda backend's part: build every cuda_kernels/*.cu for sm_90a there (registers, spills,
# smem, HGMMA/QGMMA), run its own kernels on the GPU judged against the reference
# (dsport.backends.cuda.device_check: sparse MLA on both the wgmma kernel and the CUDA-core
# one wherever h_q is a multiple of 64), and the CPU conformance of cuda, triton and torch.
# Budget: install 2 min, build 1.5, cuda device check 1.5, conformance 2, profile 2 (~9 with
# margins; each step has its own timeout so one slow step cannot eat the others).
set -u
OUT=${OUT:-./device-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { echo "== $(date +%T) $*"; }
log "machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0)); print('triton', triton.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"
log "install dsport from the working tree"
timeout 120 python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/dsport-install.log 2>&1 || { tail -5 /tmp/dsport-install.log; exit 1; }
export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
log "backends"; timeout 60 dsport backends 2>&1
log "build the cuda kernels for sm_90a"
timeout 90 dsport build --backend cuda --target sm_90a --markdown --json "$OUT/h200_cuda_build.json" >"$OUT/h200_cuda_build.md" 2>/tmp/dsport-cuda-build.log
echo "build exit $?"; cat "$OUT/h200_cuda_build.md"; tail -3 /tmp/dsport-cuda-build.log
log "cuda backend: own kernels on the GPU, judged on the CPU"
timeout 90 python3 -m dsport.backends.cuda.device_check --json "$OUT/h200_cuda_device.json" --markdown "$OUT/h200_cuda_device.md" >/tmp/dsport-cuda-device.log 2>&1
echo "device check exit $?"; tail -4 /tmp/dsport-cuda-device.log; grep -E "\| (fail|crash) \|" "$OUT/h200_cuda_device.md" | head -20
# verdicts per implementation: the wgmma sparse MLA kernel (h_q % 64 == 0) and the CUDA-core one on the same cases
python3 -c "import json,collections,sys; r=json.load(open(sys.argv[1]))['rows']; c=collections.Counter((x['op'],x['impl'],x['verdict']) for x in r); [print(*k, n) for k, n in sorted(c.items())]" "$OUT/h200_cuda_device.json" 2>&1 | tee "$OUT/h200_cuda_device_summary.txt"
log "conformance with the backends' calls on the GPU (inputs generated and judged on the CPU)"
timeout 150 dsport conformance --device cuda --backends cuda triton torch --build-report "$OUT/h200_cuda_build.json" \
  --no-progress --json "$OUT/h200_conformance.json" --markdown "$OUT/h200_conformance.md" >/tmp/dsport-conformance.log 2>&1
echo "conformance exit $?"; tail -25 /tmp/dsport-conformance.log
log "profile on the GPU"
timeout 120 dsport profile --device cuda --budget 2 --json "$OUT/h200_profile.json" --markdown "$OUT/h200_profile.md" --plot "$OUT/h200_roofline.png" >/tmp/dsport-profile.log 2>&1
echo "profile exit $?"; tail -40 /tmp/dsport-profile.log
log "done"; ls -la "$OUT"
