#!/usr/bin/env bash
# Everything one short GPU session measures, in one go (run from the repository root):
#   1. pretrain_throughput.py: localdisc vs the naive reference, B = 4, S = 448, stage 2;
#   2. a torch.profiler table of localdisc's step (where the time goes);
#   3. LD pre-training on the first 1 000 KaggleDR images (by file name) for about
#      BUDGET_S seconds of GPU time, steps derived from the measured throughput, split 1:4 between
#      the stages as in the published 20 000 + 80 000 schedule; its log's images/s extrapolated
#      to that whole schedule (extrapolate_schedule.py), for the performance issue's 45 minutes;
#   4. scaling.py: step time and peak memory from 256 to 1 024 px (B = 1) and B = 1-8 at 448
#      (SCALE_SIZES, SCALE_BATCHES).
# EXTRA adds pretrain flags, e.g. EXTRA=--compile for the compiled engine.
# Needs the first 1 000 KaggleDR images in carry/KaggleDR/images (`bash benchmarks/prepare_carry.sh
# session`: copies, not links, git-ignored).
# Results go to $OUT (session.log, log.csv, config.json, model.safetensors, figures,
# scaling.json/png).
# Test it on a CPU first at toy sizes:
#   DEVICE=cpu SIZE=64 BATCH=1 STEPS=2 BUDGET_S=5 SCALE_SIZES=32,64 SCALE_BATCHES=1,2 OUT=/tmp/gs bash benchmarks/gpu_session.sh
set -uo pipefail
export PYTHONPATH=src
OUT=${OUT:-/tmp/localdisc-gpu}
BUDGET_S=${BUDGET_S:-200}
DEVICE=${DEVICE:-cuda}; SIZE=${SIZE:-448}; BATCH=${BATCH:-4}; STEPS=${STEPS:-30}; EXTRA=${EXTRA:-}
SCALE_SIZES=${SCALE_SIZES:-256,448,640,1024}; SCALE_BATCHES=${SCALE_BATCHES:-1,2,4,8}
mkdir -p "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
date -u; git rev-parse --short HEAD 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -c "import torch; print('torch', torch.__version__)"

python benchmarks/pretrain_throughput.py --device $DEVICE --batch $BATCH --size $SIZE --steps $STEPS --profile
ips=$(python benchmarks/pretrain_throughput.py --device $DEVICE --batch $BATCH --size $SIZE --steps $STEPS \
      --variants localdisc | awk '$1=="localdisc"{print $2}')
echo "measured localdisc images/s: $ips"
steps=$(python -c "print(max(50, int($BUDGET_S * float('${ips:-100}') / (5 * $BATCH))))")
s1=$((steps / 5)); s2=$((steps - s1))
echo "pre-training $s1 + $s2 steps"
rm -rf /tmp/kaggle_run
start=$(date +%s)
python -m localdisc pretrain --data carry/KaggleDR/images --max-images 1000 --out /tmp/kaggle_run \
    --device $DEVICE --size $SIZE --batch $BATCH $EXTRA \
    --stage1-steps $s1 --stage2-steps $s2 --checkpoint-every 1000 --workers 16
echo "pre-training wall time: $(( $(date +%s) - start )) s (pool decoding included)"
python benchmarks/extrapolate_schedule.py /tmp/kaggle_run/log.csv --batch $BATCH
cp /tmp/kaggle_run/log.csv /tmp/kaggle_run/config.json /tmp/kaggle_run/model.safetensors "$OUT/"
cp "$(ls /tmp/kaggle_run/figures/clusters_*.png | tail -1)" "$OUT/clusters.png"
cp "$(ls /tmp/kaggle_run/figures/similarity_*.png | tail -1)" "$OUT/similarity.png"

python benchmarks/scaling.py --device $DEVICE --sizes "$SCALE_SIZES" --batches "$SCALE_BATCHES" \
    --steps 10 --warmup 3 --out "$OUT/scaling"
