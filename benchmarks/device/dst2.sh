#!/usr/bin/env bash
# Second device call of the dst pillar (ends within 300 s): the cells the first call did not
# finish, GraNet again with the fixed pruning order (prune, then regrow from zero), and seed 1 of
# the 98% cells. Same settings as benchmarks/device/dst.sh (20 epochs, SGD 0.05, ...).
#     OUT=/some/folder bash benchmarks/device/dst2.sh      (SMOKE=1: tiny sizes)
# Writes $OUT/dst.tar.gz and $OUT/dst.log. Resource share: the GPU + 10 CPU processes.
set -u
PY=${PYTHON:-python3}
: "${OUT:?set OUT to the output folder}"
export PYTHONPATH=src OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
START=$(date +%s)
mkdir -p "$OUT"
LOG="$OUT/dst.log"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dst-device2.XXXXXX")
: > "$LOG"
say() { echo "[dst2 $(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
CELLS=lenet300-static-0.8,lenet300-set-0.8,lenet300-rigl-0.8,lenet300-granet-0.8
CELLS=$CELLS,lenet300-granet-0.98,lenet5-granet-0.98,lenet300-granet-0.9,lenet5-granet-0.9
CELLS=$CELLS,lenet300-granet-0.95,lenet5-granet-0.95,lenet5-granet-0.8
CELLS=$CELLS,lenet5-static-0.98-s1,lenet5-set-0.98-s1,lenet5-rigl-0.98-s1,lenet5-granet-0.98-s1
CELLS=$CELLS,lenet300-static-0.98-s1,lenet300-set-0.98-s1,lenet300-rigl-0.98-s1
CELLS=$CELLS,lenet300-granet-0.98-s1
if [ "${SMOKE:-0}" = 1 ]; then
    ARGS=(--epochs 1 --subset 2000 --delta-t 5 --jobs 2); BUDGET=60; LIMIT=150
else
    ARGS=(--epochs 20 --jobs 10); BUDGET=140; LIMIT=265
fi
DEVICE=$($PY -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")' 2>> "$LOG")
say "grid (second call): device $DEVICE, budget ${BUDGET}s, limit ${LIMIT}s"
setsid "$PY" benchmarks/dst_fashion_mnist.py --device "${DEVICE:-cpu}" --extra-seeds 1 \
    --seed-sparsities 0.98 --only-cells "$CELLS" --budget "$BUDGET" \
    --data-root .devdata/fashion-mnist --out "$WORK/grid2" "${ARGS[@]}" >> "$LOG" 2>&1 &
PID=$!
for _ in $(seq "$LIMIT"); do kill -0 "$PID" 2> /dev/null || break; sleep 1; done
if kill -0 "$PID" 2> /dev/null; then
    say "time limit reached: stopping the grid (partial results kept)"
    kill -TERM -- "-$PID" 2> /dev/null; sleep 3; kill -KILL -- "-$PID" 2> /dev/null
fi
wait "$PID" 2> /dev/null
say "finished: $(ls "$WORK"/grid2/*/summary.json 2> /dev/null | wc -l) runs"
cp "$LOG" "$WORK/dst.log"
(cd "$WORK" && find . -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' \
    -o -name '*.png' -o -name '*.log' \) ! -path '*/checkpoints/*' -print0 \
    | tar --null -czf "$OUT/dst.tar.gz" -T -)
say "done in $(( $(date +%s) - START ))s; archive $OUT/dst.tar.gz"
