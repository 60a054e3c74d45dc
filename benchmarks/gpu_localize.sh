#!/usr/bin/env bash
# The localisation issue's GPU measurement in one go (run from the repository root):
#   1. two LD pre-trainings on chest X-rays for PRETRAIN_S seconds each (stage budgets 1:4),
#      B = 4, S = 448: published (uniform pooling) and --center-sensitive;
#   2. `localdisc benchmark localize` on JSRT (123 test images, template JPCLN001) with both
#      models and template matching.
# Needs in carry/ (git-ignored, 64 MiB at most): JSRT/images and SCR/masks (27 MB, from
# ../shared/data) and a pre-training pool in carry/pool (e.g. the first 1 000 files of
# CXR_Kermany/train, about 8 MB, or the JSRT training images).
# Test it on a CPU first at toy sizes:
#   DEVICE=cpu PRETRAIN_S=20 PSIZE=64 CARRY=/tmp/carry_loc OUT=/tmp/gl bash benchmarks/gpu_localize.sh
set -uo pipefail
export PYTHONPATH=src
OUT=${OUT:-/tmp/localdisc-gpu-localize}
PRETRAIN_S=${PRETRAIN_S:-200}; DEVICE=${DEVICE:-cuda}; PSIZE=${PSIZE:-448}; CARRY=${CARRY:-carry}
mkdir -p "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
date -u; git rev-parse --short HEAD 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

# A fresh folder each call: pretrain refuses a folder that holds a run, and the benchmark would
# then silently measure older runs left in /tmp (an earlier call, another toy test).
runs=$(mktemp -d)
s1=$(python -c "print($PRETRAIN_S / 5)"); s2=$(python -c "print($PRETRAIN_S * 4 / 5)")
for variant in uniform center; do
  extra=""; [ "$variant" = center ] && extra="--center-sensitive"
  python -m localdisc pretrain --data "$CARRY/pool" --modality xray --out "$runs/ld_xray_$variant" \
      --device $DEVICE --size $PSIZE --batch 4 --stage1-steps 20000 --stage2-steps 80000 \
      --stage1-seconds "$s1" --stage2-seconds "$s2" --checkpoint-every 100000 --workers 16 $extra
  cp "$runs/ld_xray_$variant/log.csv" "$OUT/log_$variant.csv"
done
python -m localdisc benchmark localize --models "$runs/ld_xray_uniform,$runs/ld_xray_center" \
    --tasks jsrt --data-root "$CARRY" --device $DEVICE --out "$OUT/localize"
