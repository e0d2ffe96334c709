#!/usr/bin/env bash
# Sourced by bench/gpu.sh and bench/gpu_lowshot.sh on a GPU machine without network: checks that $PY has a CUDA build
# of torch that sees a GPU (exit 3 otherwise: a CUDA torch is gigabytes and is not carried), then installs the
# dependencies that are missing there from bench/wheels/ (prepared here by bench/wheels.sh) into bench/.gpu-site, put
# on PYTHONPATH with a copy of the package laid out as pyproject.toml installs it, so the machine's environment is
# left as it was (exit 4 if they do not import).
# Expects PY, DEVICE, SITE and a log function from the script that sources it.

# 1. torch with CUDA must already be there
if ! GPU_SCRIPT=$(basename "$0") DEVICE=$DEVICE $PY - <<'PYEOF'
import os, sys
try:
    import torch, torchvision
except ImportError as e:
    sys.exit(f"{os.environ['GPU_SCRIPT']}: {e}; this machine needs a CUDA build of torch and torchvision (not carried: gigabytes)")
if os.environ["DEVICE"] != "cpu" and not torch.cuda.is_available():
    sys.exit(f"{os.environ['GPU_SCRIPT']}: torch {torch.__version__} sees no CUDA device")
print(f"{os.environ['GPU_SCRIPT']}: torch {torch.__version__}, torchvision {torchvision.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}, Python {sys.version.split()[0]}",
      file=sys.stderr)
PYEOF
then
    exit 3
fi

# 2. the package as pyproject.toml lays it out (cli/ and stages/ are mad_pipeline.cli and mad_pipeline.stages), then
#    the other dependencies: what is missing, from the carried wheels, into a run-local folder
PKG=$SITE-pkg
rm -rf "$PKG" && mkdir -p "$PKG"
cp -r mad_pipeline "$PKG/" && cp -r cli "$PKG/mad_pipeline/cli" && cp -r stages "$PKG/mad_pipeline/stages"
export PYTHONPATH=$PKG:$SITE${PYTHONPATH:+:$PYTHONPATH}
# and not the checkout's own mad_pipeline/ (without cli/ and stages/), which `python -m` and `-c` would put first
export PYTHONSAFEPATH=1
if [ -f bench/wheels/requirements.txt ]; then
    missing=$($PY bench/gpu_deps.py missing bench/wheels/requirements.txt bench/wheels)
    if [ -n "$missing" ]; then
        log "installing $(echo "$missing" | wc -l) missing distribution(s) from bench/wheels: $(echo $missing)"
        rm -rf "$SITE" && mkdir -p "$SITE"
        if $PY -m pip --version >/dev/null 2>&1; then
            # shellcheck disable=SC2086
            $PY -m pip install --quiet --no-index --find-links bench/wheels --no-deps --target "$SITE" $missing
        else  # no pip: a wheel is a zip file laid out as site-packages
            for req in $missing; do
                name=$(echo "${req%%==*}" | tr '-' '_')
                whl=$(ls bench/wheels/ | grep -i "^${name}-${req##*==}-" | head -1)
                [ -n "$whl" ] || { echo "$(basename "$0"): no wheel for $req in bench/wheels" >&2; exit 4; }
                $PY -m zipfile -e "bench/wheels/$whl" "$SITE"
            done
        fi
    else
        log "every dependency is already installed"
    fi
else
    log "no bench/wheels/requirements.txt (run bench/wheels.sh where there is network); using what is installed"
fi
$PY -c "import open_clip, zarr, numcodecs, dask.distributed, mad_pipeline.extraction.runner, mad_pipeline.stages.pipeline, mad_pipeline.cli.main" || {
    echo "$(basename "$0"): the dependencies do not import (see above); prepare the wheels for this Python: PYVER=x.y bench/wheels.sh" >&2
    exit 4
}
log "dependencies ready"
