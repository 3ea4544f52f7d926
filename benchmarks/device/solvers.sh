#!/usr/bin/env bash
# Headline benchmark of the learned sparse solvers on the GPU machine (issue 6).
#
#   OUT=/some/dir bash benchmarks/device/solvers.sh            # the real run (cuda, <= 330 s)
#   SMOKE=1 PYTHON=.venv/bin/python OUT=/tmp/solvers-smoke bash benchmarks/device/solvers.sh
#
# 1. trains ALISTA, LISTA-CPSS and LISTA for the 6 headline problems (one process per problem,
#    all on the one GPU, each solver with a hard time budget);
# 2. runs the headline benchmark per problem (HyperLISTA: grid search around the locally
#    Optuna-tuned setting, no Optuna needed), in parallel, then the summary;
# 3. archives everything into $OUT/solvers.tar.gz (checkpoints: ALISTA and HyperLISTA for every
#    problem, LISTA-CPSS for the default problem; LISTA's 23 MB ones stay behind: 16 MiB cap).
# Resource share: the GPU + 4 CPU cores (6 light processes, 1 thread each).
set -u
PY=${PYTHON:-python3}
: "${OUT:?set OUT to an output folder}"
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1
W=$(mktemp -d /tmp/solvers-device.XXXXXX)
LOG="$OUT/solvers.log"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
log() { echo "[$(elapsed) s] $*" | tee -a "$LOG"; }

PROBLEMS="default snr40 snr30 snr20 kappa5 kappa30"
if [ "${SMOKE:-0}" = "1" ]; then
  DEVICE=${DEVICE:-cpu}; PROBLEMS="default snr20"
  SIZE="--m 30 --n 60"; STAGE_STEPS=${STAGE_STEPS:-"5,5,5"}; BENCH_ARGS="--ista-iters 200 --fista-iters 150 --n-eval 100 --n-wall 500"
  TRAIN_LIMIT=60; TOTAL=200
else
  DEVICE=${DEVICE:-cuda}; SIZE=""; STAGE_STEPS=${STAGE_STEPS:-"1500,2000,2000"}
  BENCH_ARGS=${BENCH_ARGS:-"--ista-iters 3000 --fista-iters 2000 --n-wall 10000"}
  TRAIN_LIMIT=${TRAIN_LIMIT:-205}; TOTAL=${TOTAL:-325}
fi
TRAIN_MODELS=${TRAIN_MODELS:-ALISTA,LISTA-CPSS,LISTA}
BENCH_MODELS=${BENCH_MODELS:-LISTA,LISTA-CPSS,ALISTA,HyperLISTA}
if [ "$DEVICE" = "cuda" ] && ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DEVICE=cpu; log "no CUDA device visible: falling back to cpu"
fi
log "solvers device run: device=$DEVICE problems=[$PROBLEMS] work=$W"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$LOG"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null | tee -a "$LOG"

# 1. training, one process per problem
for P in $PROBLEMS; do
  timeout "$TRAIN_LIMIT" $PY benchmarks/solvers_headline.py train --problem "$P" --out "$W" \
    --device "$DEVICE" --models "$TRAIN_MODELS" --stage-steps "$STAGE_STEPS" \
    --budget gpu $SIZE > "$W/train-$P.log" 2>&1 &
done
wait
for P in $PROBLEMS; do cat "$W/train-$P.log" >> "$LOG"; done
log "training done"

# 2. benchmark, one process per problem, then the summary
LEFT=$(( TOTAL - $(elapsed) - 40 ))
for P in $PROBLEMS; do
  timeout "$LEFT" $PY benchmarks/solvers_headline.py bench --problem "$P" --out "$W" \
    --device "$DEVICE" --models "$BENCH_MODELS" $SIZE $BENCH_ARGS \
    --max-train-steps 20 --no-wall > "$W/bench-$P.log" 2>&1 &
done
wait
for P in $PROBLEMS; do cat "$W/bench-$P.log" >> "$LOG"; done
log "benchmark done; wall-clock race (serial, alone on the device)"
timeout $(( TOTAL - $(elapsed) - 8 )) $PY benchmarks/solvers_headline.py race --out "$W" \
  --device "$DEVICE" $BENCH_ARGS 2>&1 | grep -v '^\s*$' | tee -a "$LOG"
$PY benchmarks/solvers_headline.py summarize --out "$W" 2>&1 | tee -a "$LOG"
log "summary done"

# 3. archive (keep it under the 16 MiB cap per returned file)
mkdir -p "$W/pack/ckpt"
cp -r "$W/headline" "$W/pack/" 2>/dev/null
for P in $PROBLEMS; do
  mkdir -p "$W/pack/ckpt/$P"
  cp "$W"/ckpt/"$P"/ALISTA.* "$W/pack/ckpt/$P/" 2>/dev/null
  cp "$W"/headline/"$P"/checkpoints/HyperLISTA.* "$W/pack/ckpt/$P/" 2>/dev/null
done
cp "$W"/ckpt/default/LISTA-CPSS.* "$W/pack/ckpt/default/" 2>/dev/null
rm -rf "$W"/pack/headline/*/checkpoints
cp "$W"/*.log "$W/pack/" 2>/dev/null
tar -czf "$OUT/solvers.tar.gz" -C "$W/pack" .
log "archive $(du -h "$OUT/solvers.tar.gz" | cut -f1); total $(elapsed) s"
rm -rf "$W"
