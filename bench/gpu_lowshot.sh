#!/usr/bin/env bash
# The low-shot study on one GPU machine without network (bench/lowshot.py --device cuda), bounded in time so that it
# fits a short allowance: the shards run under --deadline-min, the tables are written from whatever was evaluated
# (titled INCOMPLETE if the deadline cut it), and everything comes back as one archive.
#
# What it assumes of the GPU machine: what bench/gpu.sh does (a CUDA torch there; every other missing dependency from
# bench/wheels/, prepared here by bench/wheels.sh and installed by bench/gpu_env.sh into a run-local folder).
#
#   bench/gpu_lowshot.sh                                                # VQA at 20% and 100%, 3 seeds, 7 minutes
#   ONLY=vcr MINUTES=20 JOBS=12 bench/gpu_lowshot.sh 'fractions=[0.01, 0.05]'     # any subset: overrides as for mad run
#   DEVICE=cpu PYTHON=.venv/bin/python JOBS=2 MINUTES=4 bench/gpu_lowshot.sh 'fractions=[0.01]' 'seeds=[0]'  # a check
#
# Output: $OUT/lowshot.tar.gz ($OUT: the device tool's folder that comes back; /tmp otherwise) with bench/lowshot.py's
# files (per-task report.md / .csv / .png, per_type.md, convergence.md, dev curves, lowshot.json), each shard's log
# and nvidia-smi's utilisation every 5 s (smi.csv); the tables also go to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
ONLY=${ONLY:-vqa}
JOBS=${JOBS:-17}
MINUTES=${MINUTES:-7}
SITE=$PWD/bench/.gpu-site
T0=$(date +%s)
log() { echo "[gpu_lowshot.sh $(( $(date +%s) - T0 )) s] $*" >&2; }
[ $# -gt 0 ] || set -- 'fractions=[0.2, 1.0]'

# 1-2. a CUDA torch, then the other dependencies from the carried wheels
. "$(dirname "$0")/gpu_env.sh"

# 3. the study, its shards cut at the deadline; a run-local cache (a GPU machine is given back bare)
RUN=${TMPDIR:-/tmp}/gpu-lowshot
CACHE=${CACHE:-$RUN/cache}
rm -rf "$RUN/out" && mkdir -p "$RUN/out" "$CACHE"
if command -v nvidia-smi >/dev/null && [ "$DEVICE" != cpu ]; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$RUN/out/smi.csv" 2>&1 &
    SMI=$!
fi
log "bench/lowshot.py --only $ONLY --jobs $JOBS --device $DEVICE --deadline-min $MINUTES $*"
rc=0
PYTHONUNBUFFERED=1 $PY bench/lowshot.py --only "$ONLY" --no-ablation --jobs "$JOBS" --device "$DEVICE" \
    --deadline-min "$MINUTES" --cache "$CACHE" --out "$RUN/out" "$@" || rc=$?
[ -z "${SMI:-}" ] || kill "$SMI" 2>/dev/null || true
log "bench/lowshot.py exited $rc"

# 4. everything back as one file: the reports, the shard logs, the GPU's utilisation
cp -r "$CACHE/bench-lowshot-logs" "$RUN/out/shard-logs" 2>/dev/null || true
DEST=${OUT:-/tmp}
mkdir -p "$DEST"
tar czf "$DEST/lowshot.tar.gz" -C "$RUN/out" .
log "done: $DEST/lowshot.tar.gz ($(du -h "$DEST/lowshot.tar.gz" | cut -f1))"
exit "$rc"
