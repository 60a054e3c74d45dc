#!/usr/bin/env bash
# The peer-methods comparison, on a GPU (defaults) or at CPU scale (run from the repository root):
#   `localdisc benchmark pretrain-methods`: each of METHODS pre-trains the same network for
#   BUDGET_S seconds on the first 1 000 KaggleDR images (B = BATCH, S = SIZE; LD 1:4 between its
#   stages), then the transfer benchmark on TASKS with LABELS and SEEDS at TRANSFER_SIZE, random
#   init as the floor.
# CPU scale (2 cores; the transfer protocol of `benchmark transfer --cpu-scale`):
#   DEVICE=cpu SIZE=128 BATCH=2 WORKERS=2 BUDGET_S=240 LABELS=2 TRANSFER_SIZE=256 OUT=/tmp/cm bash benchmarks/compare_methods.sh
#   (`localdisc benchmark pretrain-methods --cpu-scale --data-root DIR` runs these settings, with
#   PRETRAIN='{"pool_size": 256, "crop_scale": [0.2, 0.35]}' for the fundus pool, as recorded)
#   (STEPS_PER_EPOCH=5 for the longer epochs of `benchmark transfer --cpu-scale --steps-per-epoch 5`)
#   TASKS=drive,stare adds STARE's 2-label task (carry/STARE; on a device STARE does not fit
#   carry beside the pool and DRIVE: a second call carries it with carry/methods-pretrain).
#   Another pre-training draw of every method: PRETRAIN='{"seed": 1}' and another OUT; then
#   `python benchmarks/methods_table.py OUT1/methods OUT2/methods` pools the runs' tables.
# $OUT/methods/results.md ends with the command that reruns it: `env`, every setting (defaults
# included), `bash benchmarks/compare_methods.sh`.
# Five methods x 200 s do not fit one 15-minute device session with the transfer runs: run a
# subset of METHODS per session and carry the finished pre-training runs ($OUT/methods/pretrain,
# a few MB of weights) into the next one as carry/methods-pretrain; finished runs are reused.
# Needs carry/KaggleDR/images and carry/DRIVE (`bash benchmarks/prepare_carry.sh transfer`). The
# issue's SCR clavicle task is a second call (both data sets exceed carry's 64 MiB), with the
# X-ray pool and JSRT/SCR (`bash benchmarks/prepare_carry.sh clavicle`):
#   POOLS=xray=carry/CXR_Kermany/train/NORMAL TASKS=scr_clavicle bash benchmarks/compare_methods.sh
#   (TASKS=scr_clavicle,scr_lung,scr_heart fine-tunes the same pre-trainings on SCR's organs too)
# Test it on a CPU first at toy sizes:
#   DEVICE=cpu BUDGET_S=4 SIZE=64 METHODS=ld,simclr EPOCHS=1 SEEDS=1 LABELS=2 OUT=/tmp/gm bash benchmarks/compare_methods.sh
set -uo pipefail
export PYTHONPATH=src
OUT=${OUT:-/tmp/localdisc-gpu-methods}; METHODS=${METHODS:-ld,simclr,densecl,pixpro,genesis}
BUDGET_S=${BUDGET_S:-200}; DEVICE=${DEVICE:-cuda}; SIZE=${SIZE:-448}; TASKS=${TASKS:-drive}
POOLS=${POOLS:-fundus=carry/KaggleDR/images}
LABELS=${LABELS:-2,20}; SEEDS=${SEEDS:-3}; EPOCHS=${EPOCHS:-100}; BATCH=${BATCH:-4}
TRANSFER_SIZE=${TRANSFER_SIZE:-512}; WORKERS=${WORKERS:-16}
# Adam steps per fine-tuning epoch; empty: one pass over the labelled images (the paper's epoch,
# 1 step with 2 labels and batch 2; `benchmark transfer --steps-per-epoch`)
STEPS_PER_EPOCH=${STEPS_PER_EPOCH:-}
# More PretrainConfig fields as JSON, e.g. PRETRAIN='{"pool_size": 256, "crop_scale": [0.2, 0.35]}'
# (crop_scale is LD's; the peers keep their published crops of the same pool).
PRETRAIN=${PRETRAIN:-'{}'}
mkdir -p "$OUT/methods"
exec > >(tee -a "$OUT/session.log") 2>&1
date -u; git rev-parse --short HEAD 2>/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || lscpu | grep 'Model name'
if [ -d carry/methods-pretrain ] && [ ! -d "$OUT/methods/pretrain" ]; then
    cp -r carry/methods-pretrain "$OUT/methods/pretrain"
fi

# The command that reruns this, every setting given (a default changed since still reruns it):
# results.md ends with it and each run's config.json records it as its command. `python -` would
# record "- OUT/methods PRETRAIN", neither this script nor its settings (reviewer).
RERUN=(env)
for name in OUT METHODS BUDGET_S DEVICE SIZE TASKS POOLS LABELS SEEDS EPOCHS BATCH TRANSFER_SIZE \
    WORKERS STEPS_PER_EPOCH PRETRAIN; do
    RERUN+=("$name=${!name}")
done
RERUN+=(bash "$0")

start=$(date +%s)
python - "$OUT/methods" "$PRETRAIN" "${RERUN[@]}" <<PY
import json, sys
out_dir, pretrain = sys.argv[1:3]
sys.argv = sys.argv[3:]  # what localdisc.eval.provenance records as the command
from localdisc.tasks.benchmark_methods import MethodsBenchmarkConfig, run_methods_benchmark
config = MethodsBenchmarkConfig(
    methods="$METHODS".split(","), pools="$POOLS".split(","),
    budget_seconds=$BUDGET_S, tasks="$TASKS".split(","), labels="$LABELS".split(","),
    seeds=$SEEDS, data_root="carry", size=$SIZE, batch=$BATCH, device="$DEVICE",
    pretrain={"max_images": 1000, "workers": $WORKERS, "checkpoint_every": 100000,
              **json.loads(pretrain)},
    transfer={"frozen_epochs": $EPOCHS, "epochs": $EPOCHS, "size": $TRANSFER_SIZE,
              "steps_per_epoch": ${STEPS_PER_EPOCH:-None}},
)
run_methods_benchmark(config, out_dir)
PY
echo "wall time: $(( $(date +%s) - start )) s"
rm -rf "$OUT"/methods/transfer/runs/*/*/*/*/predictions "$OUT"/methods/pretrain/*/*/checkpoints
