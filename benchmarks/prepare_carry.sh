#!/usr/bin/env bash
# Copy what one GPU script reads into carry/ (git-ignored) as real files, so that it travels to
# the device machine (a symbolic link would travel as a link; carry holds 64 MiB in all):
#   bash benchmarks/prepare_carry.sh session    # gpu_session.sh: the first 1 000 KaggleDR images
#   bash benchmarks/prepare_carry.sh transfer   # gpu_transfer.sh, compare_methods.sh: + DRIVE
#   bash benchmarks/prepare_carry.sh vessels    # gpu_shape_guided.sh drive|stare: DRIVE, STARE, priors
#   bash benchmarks/prepare_carry.sh organs     # gpu_shape_guided.sh scr_lung|scr_heart: JSRT, SCR
#   bash benchmarks/prepare_carry.sh clavicle   # compare_methods.sh on scr_clavicle: CXR pool, JSRT, SCR
# Then name `carry` in the device call's carry list. DATA (default ../shared/data) is the source.
# carry/ is emptied first: one script's data at a time.
set -euo pipefail
DATA=${DATA:-../shared/data}
what=${1:?"which script: session, transfer, vessels, organs or clavicle"}
case "$what" in session|transfer|vessels|organs|clavicle) ;;
    *) echo "unknown: $what (session, transfer, vessels, organs or clavicle)" >&2; exit 2 ;;
esac
[ -d "$DATA" ] || { echo "no data folder $DATA (set DATA)" >&2; exit 1; }
rm -rf carry && mkdir -p carry

first() {  # first() SRC DEST N: the first N files of SRC by name
    mkdir -p "$2"
    find -L "$1" -maxdepth 1 -type f | LC_ALL=C sort | sed -n "1,${3}p" | xargs -d '\n' cp -L -t "$2"
}

case "$what" in
    session) first "$DATA/KaggleDR/images" carry/KaggleDR/images 1000 ;;
    transfer)
        first "$DATA/KaggleDR/images" carry/KaggleDR/images 1000
        cp -rL "$DATA/DRIVE" carry/ ;;
    vessels) cp -rL "$DATA/DRIVE" "$DATA/STARE" "$DATA/priors" carry/ ;;
    organs) cp -rL "$DATA/JSRT" "$DATA/SCR" carry/ ;;
    clavicle)
        first "$DATA/CXR_Kermany/train/NORMAL" carry/CXR_Kermany/train/NORMAL 1000
        cp -rL "$DATA/JSRT" "$DATA/SCR" carry/ ;;
esac
du -sh carry
