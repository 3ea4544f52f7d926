#!/usr/bin/env bash
# Device run of the dst pillar (GPU machine, one shot). From the repo root:
#
#     OUT=/some/folder bash benchmarks/device/dst.sh
#
# 1. a 20-second CUDA check (one tiny DST run on the GPU); without a working GPU the grid falls
#    back to CPU with fewer epochs (and says so in the log);
# 2. the accuracy grid: benchmarks/dst_fashion_mnist.py, LeNet-300-100 and LeNet-5 x 80/90/95/98%
#    x static/SET/RigL/GraNet + dense (34 runs), then seeds 1 and 2 of dense and the 90%/98%
#    cells (36 more runs, for means over seeds), 10 processes sharing the GPU, 20 epochs each;
#    no new run starts after GRID_BUDGET seconds, and the grid is stopped at GRID_LIMIT;
# 3. the speed benchmark: benchmarks/dst_speed.py on the CPU (1 thread: masked vs dense step,
#    CSR vs dense inference of the trained RigL LeNet-300-100 at 95/98%) and on the GPU
#    (step times only), side by side.
#
# Everything lands in ONE archive $OUT/dst.tar.gz (written after each stage) + $OUT/dst.log.
# The whole script ends by itself within 390 s. Resource share: the GPU + 10 CPU processes.
# SMOKE=1: tiny sizes, for a local end-to-end check:
#     SMOKE=1 PYTHON=.venv/bin/python OUT=/tmp/dst-smoke bash benchmarks/device/dst.sh
set -u
PY=${PYTHON:-python3}
: "${OUT:?set OUT to the output folder}"
export PYTHONPATH=src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
DATA=.devdata/fashion-mnist
START=$(date +%s)
mkdir -p "$OUT"
LOG="$OUT/dst.log"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dst-device.XXXXXX")
: > "$LOG"

say() { echo "[dst $(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

# run_limited SECONDS CMD...: run CMD in its own process group, kill the group after SECONDS
run_limited() {
    local limit=$1; shift
    setsid "$@" >> "$LOG" 2>&1 &
    local pid=$! waited=0
    while kill -0 "$pid" 2> /dev/null; do
        if [ "$waited" -ge "$limit" ]; then
            say "time limit ${limit}s reached: stopping $1 (partial results kept)"
            kill -TERM -- "-$pid" 2> /dev/null; sleep 3; kill -KILL -- "-$pid" 2> /dev/null
            break
        fi
        sleep 1; waited=$((waited + 1))
    done
    wait "$pid" 2> /dev/null
    return 0
}

pack() {  # small archive: summaries, logs, tables, plots, the trained RigL LeNet-300-100 95/98%
    (cd "$WORK" && find . -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' \
        -o -name '*.png' -o -path '*/lenet300-rigl-0.95/final.*' \
        -o -path '*/lenet300-rigl-0.98/final.*' \) \
        ! -path '*/checkpoints/*' -print0 | tar --null -czf "$OUT/dst.tar.gz.tmp" -T - ) \
        && mv "$OUT/dst.tar.gz.tmp" "$OUT/dst.tar.gz"
    cp "$LOG" "$WORK/dst.log" 2> /dev/null
}

if [ "${SMOKE:-0}" = 1 ]; then
    EPOCHS=1; EPOCHS_CPU=1; JOBS=2
    GRID_ARGS=(--subset 2000 --delta-t 5 --sparsities 0.9,0.98 --extra-seeds 1)
    GRID_BUDGET=60; GRID_LIMIT=150; SPEED_ARGS=(--rounds 1 --steps 30 --repeats 2)
    SPEED_LIMIT=60
else
    EPOCHS=20; EPOCHS_CPU=3; GRID_ARGS=(--extra-seeds 1,2); JOBS=10
    GRID_BUDGET=200; GRID_LIMIT=285; SPEED_ARGS=(); SPEED_LIMIT=55
fi

say "python: $($PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())' 2>&1)"
DEVICE=cpu
if timeout 60 "$PY" - >> "$LOG" 2>&1 <<'EOF'
import torch
from sparseprior.dst import DSTConfig, DSTRunConfig, run_dst
from sparseprior.engine import TrainConfig
assert torch.cuda.is_available(), "no CUDA"
cfg = DSTRunConfig(dst=DSTConfig(method="rigl", sparsity=0.9, delta_t=3), model="lenet5",
                   dataset="synthetic", dataset_options={"n_train": 256, "n_test": 64},
                   train=TrainConfig(epochs=1, batch_size=32, device="cuda", progress=False))
s = run_dst(cfg)
assert s["updates"] >= 1 and abs(s["mask_density"] - 0.1) < 0.01, s
print("cuda check ok", s["test_accuracy"], s["device"])
EOF
then
    DEVICE=cuda
else
    EPOCHS=$EPOCHS_CPU
    say "CUDA check failed: the grid runs on CPU with $EPOCHS epochs"
fi

say "grid: device $DEVICE, $EPOCHS epochs, $JOBS jobs, budget ${GRID_BUDGET}s, limit ${GRID_LIMIT}s"
run_limited "$GRID_LIMIT" "$PY" benchmarks/dst_fashion_mnist.py --device "$DEVICE" \
    --jobs "$JOBS" --epochs "$EPOCHS" --budget "$GRID_BUDGET" --data-root "$DATA" \
    --out "$WORK/grid" "${GRID_ARGS[@]}"
say "grid finished: $(ls "$WORK"/grid/*/summary.json 2> /dev/null | wc -l) runs"
pack

say "speed benchmarks (CPU 1 thread; GPU step times)"
run_limited "$SPEED_LIMIT" "$PY" benchmarks/dst_speed.py --device cpu --data-root "$DATA" \
    --grid "$WORK/grid" --out "$WORK/speed-cpu" "${SPEED_ARGS[@]}" &
if [ "$DEVICE" = cuda ]; then
    run_limited "$SPEED_LIMIT" "$PY" benchmarks/dst_speed.py --device cuda --data-root "$DATA" \
        --models lenet300,lenet5 --skip-inference --out "$WORK/speed-gpu" "${SPEED_ARGS[@]}" &
fi
wait
pack
say "done in $(( $(date +%s) - START ))s; archive $OUT/dst.tar.gz"
pack
