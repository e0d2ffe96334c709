#!/usr/bin/env bash
# Prepare bench/wheels/ (git-ignored): the wheels bench/gpu.sh installs on a GPU machine that has no network.
#
#   bench/wheels.sh                        # wheels for this machine's Python and platform (x86_64 Linux, CPython 3.11 here)
#   PYVER=3.12 bench/wheels.sh             # for another CPython on the GPU machine (binary wheels differ per version)
#   HAVE="numpy pandas pyarrow" bench/wheels.sh   # no wheels for what the GPU machine already has (a smaller carry)
#
# It writes bench/wheels/requirements.txt (name==version of every distribution bench/gpu_extract.py imports, as
# installed in this environment, torch and its CUDA libraries left out) and downloads exactly those wheels, without
# their dependencies (the list is already the closure). Torch is not carried: a CUDA build is gigabytes, and the
# device tool carries at most 64 MiB of ignored files; bench/gpu.sh checks that the GPU machine has one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=bench/wheels
PYVER=${PYVER:-$($PY -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
PLATFORM=${PLATFORM:-manylinux2014_$(uname -m)}
rm -rf "$OUT"
mkdir -p "$OUT"
$PY bench/gpu_deps.py freeze 2>/dev/null > "$OUT/requirements.txt"
echo "wheels.sh: $(wc -l < "$OUT/requirements.txt") distributions for CPython $PYVER on $PLATFORM"
# HAVE: distributions the GPU machine has already (any version): listed, not downloaded (gpu_deps.py missing skips them)
norm() { tr 'A-Z_.' 'a-z--'; }
have=" $(echo "${HAVE:-}" | norm) "
while read -r req; do
    case "$have" in *" $(echo "${req%%==*}" | norm) "*) ;; *) echo "$req" ;; esac
done < "$OUT/requirements.txt" > "$OUT/download.txt"
$PY -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --platform "$PLATFORM" \
    --platform "manylinux_2_28_$(uname -m)" --platform "manylinux_2_17_$(uname -m)" --platform any \
    -d "$OUT" -r "$OUT/download.txt"
echo "wheels.sh: $(ls "$OUT"/*.whl | wc -l) wheels, $(du -sh "$OUT" | cut -f1) in $OUT"
