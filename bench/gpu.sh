#!/usr/bin/env bash
# Stage 1 on one GPU machine without network, in under 4 minutes: ViT-L/14 and ViT-B/16 (random weights), end to end
# vs forward only, the GPU's busy fraction and the time split (bench/gpu_extract.py; docs/benchmarks.md#stage-1-on-a-gpu);
# then stage 2, in under 4 more: a ViLT-B/32 student at 384 px trained from stores, with the GPU's busy share of the
# step (bench/distill.py --device cuda).
#
# What it assumes of the GPU machine, and nothing more:
#   - a Python 3 (python3, or $PYTHON) with a CUDA build of torch and torchvision that sees a GPU: checked first, the
#     script stops with exit code 3 otherwise (a CUDA torch is gigabytes and is not carried);
#   - x86_64 Linux with the same CPython minor version the wheels were prepared for (bench/wheels.sh; PYVER=3.12
#     bench/wheels.sh prepares them for another), when some of the other dependencies are missing there.
# Everything else comes from bench/wheels/ (prepared here with bench/wheels.sh, carried with the working tree): only
# the distributions that are not installed are installed, without network, into a run-local folder (bench/.gpu-site,
# put on PYTHONPATH), so the machine's environment is left as it was. The package itself is a copy of the working
# tree laid out as pyproject.toml installs it (bench/.gpu-site-pkg: cli/ and stages/ become mad_pipeline.cli and
# mad_pipeline.stages), with no build step. Where pip can install into the environment, the same wheels
# work with `pip install --no-index --find-links bench/wheels -r bench/wheels/requirements.txt` and
# `pip install --no-index --find-links bench/wheels --no-deps --no-build-isolation -e .`.
#
# Disk: the JPEGs (~0.3 GB), one weight file (ViT-L/14: 1.7 GB) and one store at a time (~1.6 GB) in a run folder
# under $TMPDIR, removed at the end. Time: the Python step runs under `timeout` (GPU_BENCH_TIMEOUT, default 225 s)
# and skips the optional switch measurements (channels-last, torch.compile) when its own budget is spent.
#
#   bench/gpu.sh                             # defaults: 3,000 JPEGs, ViT-L/14 then ViT-B/16, batch size auto
#   IMAGES=2000 EXTRA="--skip compile" bench/gpu.sh
#   DEVICE=cpu PYTHON=.venv/bin/python bench/gpu.sh   # the same steps on CPU with a tiny model and 32 JPEGs (a check)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cpu ]; then IMAGES=${IMAGES:-32}; MODELS=${MODELS:-tiny}; EXTRA=${EXTRA:-"--batch-size 8"}; fi
IMAGES=${IMAGES:-3000}
SITE=$PWD/bench/.gpu-site
T0=$(date +%s)
log() { echo "[gpu.sh $(( $(date +%s) - T0 )) s] $*" >&2; }

# 1-2. a CUDA torch, then the other dependencies from the carried wheels (bench/gpu_env.sh)
. "$(dirname "$0")/gpu_env.sh"

# 3. the bench itself, bounded in time; the figures go to stdout and to $OUT/gpu-result.json ($OUT: the device
#    tool's folder that comes back; /tmp otherwise)
JSON=${OUT:-/tmp}/gpu-result.json
mkdir -p "$(dirname "$JSON")"
# shellcheck disable=SC2086
timeout "${GPU_BENCH_TIMEOUT:-225}" $PY bench/gpu_extract.py --device "$DEVICE" --images "$IMAGES" \
    --models "${MODELS:-clip-vit-l,clip-vit-b16}" --budget-s "${BUDGET_S:-185}" --json "$JSON" ${EXTRA:-}
log "stage 1 done"

# 4. stage 2 (DISTILL=0 skips it): a ViLT-B/32 student at 384 px trained from stores of ViT-B/16 geometry, plain
#    finetuning and store-fed MAD, through the real trainer (bench/distill.py --device cuda): ms/step, samples/s and
#    the share of the step the GPU was busy (not waiting for the loader), plus nvidia-smi's utilisation; figures to
#    stdout and $OUT/gpu-distill.json
if [ "${DISTILL:-1}" = 1 ]; then
    DJSON=${OUT:-/tmp}/gpu-distill.json
    if [ "$DEVICE" = cpu ]; then
        DARGS=${DISTILL_ARGS:-"--student vilt-tiny --steps 3 --warmup 1 --batch-size 8 --world-size 64"}
    else
        DARGS=${DISTILL_ARGS:-"--student vilt-b32 --steps 40 --warmup 5 --batch-size 64 --num-workers 8 --world-size 1024 --threads 0"}
    fi
    # shellcheck disable=SC2086
    timeout "${GPU_DISTILL_TIMEOUT:-240}" $PY bench/distill.py --device "$DEVICE" --skip online,loader --repeats 1 \
        $DARGS --json "$DJSON" || log "stage-2 bench stopped early (exit $?)"
fi
log "done"
