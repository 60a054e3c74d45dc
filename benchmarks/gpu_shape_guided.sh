#!/usr/bin/env bash
# The shape-guided issue's GPU measurement, one task per call (run from the repository root):
#   `localdisc benchmark shape-guided` on TASK (drive, stare, scr_lung or scr_heart): LD stage 1
#   for STAGE1_S seconds on the task's own images (every split, labels unused), then per prior
#   (OCTA, simulated, the other data set's masks) stage 2 with the adversarial prior for STAGE2_S
#   seconds, outputs A and B, a refinement network of REFINE steps; k-means, the filter rows
#   (Sato, Frangi, the line detector, Sato + line; each at a fraction also without specks) and the
#   line-taught networks (alone, and with simulated trees painted on) in the same run.
#   B = 4, S = 448 (pool 512), evaluation as in the transfer benchmark (paper Dice at 512).
# Needs carry/DRIVE, carry/STARE and carry/priors (`bash benchmarks/prepare_carry.sh vessels`; 50 MB);
# TASK=scr_lung or scr_heart (simulated prior; the prior's mean shape as the baseline row) needs
# carry/JSRT and carry/SCR instead (`bash benchmarks/prepare_carry.sh organs`; 27 MB); for
# them PRIOR_WEIGHT=10 POSE=kept DEPTH=3 are the settings of the CPU runs (benchmarks/RESULTS.md;
# DEPTH is the LD encoder's VGG blocks, 5 as published by default).
# Results go to $OUT (session log, results.json/md, the evaluation's per-image rows).
# Test it on a CPU first at toy sizes:
#   DEVICE=cpu STAGE1_S=10 STAGE2_S=10 REFINE=2 STUDENT_STEPS=2 SIZE=64 BATCH=1 MAX_TEST=2 OUT=/tmp/gsg bash benchmarks/gpu_shape_guided.sh
set -uo pipefail
export PYTHONPATH=src
OUT=${OUT:-/tmp/localdisc-gpu-shape}; TASK=${TASK:-drive}; PRIORS=${PRIORS:-octa,simulated,other}
STAGE1_S=${STAGE1_S:-60}; STAGE2_S=${STAGE2_S:-60}; REFINE=${REFINE:-600}; DEVICE=${DEVICE:-cuda}
STUDENT_STEPS=${STUDENT_STEPS:-1200}  # the filter-taught networks (vessels)
SIZE=${SIZE:-448}; BATCH=${BATCH:-4}; MAX_TEST=${MAX_TEST:-}
PRIOR_WEIGHT=${PRIOR_WEIGHT:-1}; POSE=${POSE:-free}; DEPTH=${DEPTH:-5}
# Before any device time: a task without its data is skipped by the benchmark (an empty table).
case "$TASK" in
    drive|stare) needs="DRIVE STARE priors"; kind=vessels ;;
    *) needs="JSRT SCR"; kind=organs ;;
esac
for need in $needs; do
    [ -d "carry/$need" ] || { echo "no carry/$need: bash benchmarks/prepare_carry.sh $kind" >&2; exit 2; }
done
mkdir -p "$OUT"
exec > >(tee "$OUT/session-$TASK.log") 2>&1
date -u; git rev-parse --short HEAD 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || lscpu | grep "Model name"

start=$(date +%s)
python -m localdisc benchmark shape-guided --tasks "$TASK" --priors "$PRIORS" --data-root carry \
    --size "$SIZE" --batch "$BATCH" --stage1-steps 20000 --stage2-steps 80000 \
    --stage1-seconds "$STAGE1_S" --stage2-seconds "$STAGE2_S" --refine-steps "$REFINE" \
    --student-steps "$STUDENT_STEPS" \
    --prior-weight "$PRIOR_WEIGHT" --prior-pose "$POSE" --depth "$DEPTH" \
    --device "$DEVICE" ${MAX_TEST:+--max-test "$MAX_TEST"} --out "$OUT/shape-$TASK"
echo "benchmark wall time: $(( $(date +%s) - start )) s"
# Keep the upload small: tables, logs and per-image rows, not the weights and checkpoints.
find "$OUT/shape-$TASK" \( -name "*.safetensors" -o -name checkpoints -o -name tensorboard \) \
    -prune -exec rm -rf {} + 2>/dev/null
