#!/usr/bin/env bash
# The GPU check (issue 15, item 6): one script, under five minutes, on a machine with CUDA.
#
#   1. bncore against torch.nn (cuDNN) on the GPU: float64 parity at 1e-10 on every backend
#      that runs there (tests/unit/bncore/test_cuda.py, skipped where there is no GPU);
#   2. bncore against cuDNN at the benchmark shapes, with the achieved fraction of memory
#      bandwidth (benchmarks/bn_speed.py --bandwidth; the floor is a plain copy, same run);
#   3. a training run on the GPU: the trainer a worker launches, the paper's MLP with BN;
#   4. with two or more GPUs: a 2-replica run over NCCL with sync_batchnorm and with torch's
#      SyncBatchNorm (the oracle), launched as a worker launches it (torch.distributed.run).
#
# Usage, from the repository root:  OUT=gpu-check bash benchmarks/gpu_check.sh
# Everything it prints is also written under $OUT. It exits non-zero if any step failed.
#
# On a GPU image without bnlab's own dependencies (the lent machines have torch, numpy,
# scikit-learn and pytest, not pydantic or mnist1d), carry wheels and set PYTHONPATH first;
# /work/.library/device/README.md shows how (pydantic, pydantic-core, annotated-types,
# typing-inspection, mnist1d). The parity tests run with --noconftest: the suite's conftest
# imports the service.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-check}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
failed=()
step() { printf '\n== %s\n' "$1"; }

step "device"
"$PY" - <<'EOF' | tee "$OUT/device.txt" || exit 1
import torch
assert torch.cuda.is_available(), "no CUDA device: this check needs a GPU"
p = torch.cuda.get_device_properties(0)
print(f"torch {torch.__version__}, {torch.cuda.device_count()} x {p.name}, "
      f"{p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
EOF
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())')

step "1. parity with torch.nn on CUDA (float64, 1e-10)"
timeout 150 "$PY" -m pytest -q --noconftest -p no:cacheprovider tests/unit/bncore/test_cuda.py \
    2>&1 | tee "$OUT/parity.txt" || failed+=(parity)

step "2. bncore vs cuDNN, time ratios and bandwidth"
# The benchmark shapes, and one of 256 MiB that no GPU cache holds.
timeout 120 "$PY" benchmarks/bn_speed.py --device cuda --repeats 11 --bandwidth \
    --shapes 4096x1024,64x64x32x32,256x128x8x8,256x256x32x32 \
    2>&1 | tee "$OUT/bn_speed.txt" || failed+=(bn_speed)

spec() {  # a spec of the paper's MLP with BN on digits, on the GPU
    printf '{"name": "gpu-check-%s", "dataset": "digits", "model": {"norm": "%s"},
             "steps": 2000, "eval_every": 500, "device": "cuda", "replicas": %s,
             "batch_size": 64}' "$2" "$2" "$1"
}

step "3. a training run on the GPU"
spec 1 batchnorm >"$OUT/spec-1.json"
timeout 60 "$PY" -m bncore.train "$OUT/spec-1.json" >"$OUT/train-1.jsonl" 2>"$OUT/train-1.err" \
    || failed+=(train)
"$PY" - "$OUT/train-1.jsonl" <<'EOF' || failed+=(train-events)
import json, sys
events = [json.loads(line) for line in open(sys.argv[1])]
start, end = events[0], events[-1]
assert start["device"].startswith("cuda"), start["device"]
assert end["outcome"] == "succeeded", end
print(f"device {start['device']}: {end['step']} steps in {end['wall_time']:.1f} s "
      f"({end['step'] / end['wall_time']:.0f} steps/s), "
      f"test acc {end['summary']['final_test_acc']:.3f}")
EOF

step "4. two replicas over NCCL"
if [ "$GPUS" -ge 2 ]; then
    for norm in sync_batchnorm torch_sync_batchnorm; do
        spec 2 "$norm" >"$OUT/spec-2-$norm.json"
        timeout 90 "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 \
            -m bncore.train "$OUT/spec-2-$norm.json" \
            >"$OUT/train-2-$norm.jsonl" 2>"$OUT/train-2-$norm.err" || failed+=("nccl-$norm")
        tail -n 1 "$OUT/train-2-$norm.jsonl"
    done
else
    echo "skipped: $GPUS GPU(s); a 2-rank NCCL run needs two"
fi

step "result"
if [ ${#failed[@]} -eq 0 ]; then
    echo "all steps passed"
else
    echo "failed: ${failed[*]}"
    exit 1
fi
