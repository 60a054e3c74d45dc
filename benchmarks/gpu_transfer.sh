#!/usr/bin/env bash
# The transfer issue's GPU measurement in one go (run from the repository root):
#   1. LD pre-training on the first 1 000 KaggleDR images for PRETRAIN_S seconds of wall clock
#      (stage budgets 1:4, as the published 20 000 + 80 000 schedule), B = 4, S = 448;
#   2. `localdisc benchmark transfer` on DRIVE at 512 x 512, random init and that run, 2 and all
#      (20 = 16 + 4) labels, SEEDS seeds: the anchor table of the issue.
# Needs carry/KaggleDR/images and carry/DRIVE (`bash benchmarks/prepare_carry.sh transfer`; 58 MiB).
# Results go to $OUT (session.log, pretrain log/config, results.json/md, figures).
# Test it on a CPU first at toy sizes:
#   DEVICE=cpu PRETRAIN_S=20 SIZE=64 PSIZE=64 EPOCHS=1 SEEDS=1 LABELS=2 OUT=/tmp/gt bash benchmarks/gpu_transfer.sh
set -uo pipefail
export PYTHONPATH=src
OUT=${OUT:-/tmp/localdisc-gpu-transfer}
PRETRAIN_S=${PRETRAIN_S:-200}; DEVICE=${DEVICE:-cuda}; PSIZE=${PSIZE:-448}; SIZE=${SIZE:-512}
EPOCHS=${EPOCHS:-100}; SEEDS=${SEEDS:-3}; LABELS=${LABELS:-2,all}
for need in carry/KaggleDR/images carry/DRIVE; do  # before any device time
    [ -d "$need" ] || { echo "no $need: bash benchmarks/prepare_carry.sh transfer" >&2; exit 2; }
done
mkdir -p "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
date -u; git rev-parse --short HEAD 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

# A fresh folder each call: pretrain refuses a folder that holds a run, and the transfer would
# then silently fine-tune an older run left in /tmp (an earlier call, another toy test).
run=$(mktemp -d)/ld_kaggle_${PRETRAIN_S}s
s1=$(python -c "print($PRETRAIN_S / 5)"); s2=$(python -c "print($PRETRAIN_S * 4 / 5)")
start=$(date +%s)
python -m localdisc pretrain --data carry/KaggleDR/images --max-images 1000 --out "$run" \
    --device $DEVICE --size $PSIZE --batch 4 --stage1-steps 20000 --stage2-steps 80000 \
    --stage1-seconds "$s1" --stage2-seconds "$s2" --checkpoint-every 100000 --workers 16 \
    || { echo "pre-training failed (above): no transfer without it" >&2; exit 1; }
echo "pre-training wall time: $(( $(date +%s) - start )) s (pool decoding included)"
cp "$run/log.csv" "$run/config.json" "$OUT/"

start=$(date +%s)
python -m localdisc benchmark transfer --inits "random,$run" --tasks drive --labels "$LABELS" \
    --seeds "$SEEDS" --data-root carry --size "$SIZE" --frozen-epochs "$EPOCHS" \
    --epochs "$EPOCHS" --device $DEVICE --out "$OUT/transfer"
echo "transfer wall time: $(( $(date +%s) - start )) s"
rm -rf "$OUT"/transfer/runs/*/*/*/*/predictions  # keep the upload small
