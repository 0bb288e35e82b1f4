#!/usr/bin/env bash
# The GPU check on a lent GPU machine, from a clean copy, in a time limit (docs/gpu.md, "One GPU check").
#
#   bash benchmarks/gpu_visit.sh prepare         # HERE (with network): wheels into .whl/, big ones in parts
#   bash benchmarks/gpu_visit.sh check [ARGS]    # THERE (no network): install the wheels, run the check
#
# `prepare` downloads (pip download, cp312 manylinux wheels, --no-deps) what the GPU machine's image
# lacks: diffusers (the export and the PyTorch peer), onnxruntime-gpu (ort-cuda / ort-trt), polygraphy
# and onnx-graphsurgeon (graph cleaning before TensorRT). A wheel larger than PART_MB is cut with
# `split -b ${PART_MB}M` into .whl/<n>/<wheel>.part-aa, -ab, ...: each numbered folder is small enough to
# travel in one call with the working tree (64 MiB together, the tree included), so a call carries one
# of them to the warm machine, where the earlier ones stay. `check` joins every wheel's parts, in order,
# under the wheel's own file name (pip reads the name), and installs all with
# `pip install --no-index --no-deps --target` in front of the image's packages: the GPU build of
# onnxruntime then shadows the image's CPU one without uninstalling anything.
#
# `check` copies the tracked files into a fresh folder (git archive, else tar without the ignored and
# carried folders), runs `outpaint bench --gpu-check` there under `timeout`, and writes under $OUT:
#   gpu-check.json (the report), gpu-check.log (its output), machine.txt (nvidia-smi, pip list).
# Exit status: the check's (0 pass, 1 a failure, 2 no GPU), 124 when the time limit killed it.
set -uo pipefail

MODE=${1:-}
shift || true
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
PART_MB=${PART_MB:-}                 # empty: 62 MiB less what the working tree sends with each call
OUT=${OUT:-$PWD/out/gpu-visit}
LIMIT_S=${GPU_CHECK_LIMIT_S:-510}    # the check itself: its budget, then its report and process exits
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}  # the check's own budget (the issue's 8 minutes)
MODEL=${GPU_CHECK_MODEL:-/tmp/outpaint-gpu-check-model}  # kept on a warm machine: a re-run reuses it
SITE=${GPU_VISIT_SITE:-/tmp/outpaint-site}     # where the wheels are installed (--target)
CLEAN=${GPU_VISIT_CLEAN:-/tmp/outpaint-clean}  # the clean copy the check runs from
STASH=${GPU_VISIT_STASH:-/tmp/outpaint-wheels}  # THERE: the parts carried so far (a call's carry replaces .whl/)

lzma_wheel() {  # the same wheel, its members recompressed with LZMA: pip's zipfile reads it as it is
  "$PY" - "$1" <<'EOF'
import os, sys, zipfile
wheel = sys.argv[1]
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(wheel + ".tmp", "w", zipfile.ZIP_LZMA) as dst:
    for member in src.infolist():
        dst.writestr(member, src.read(member), compress_type=zipfile.ZIP_LZMA)
os.replace(wheel + ".tmp", wheel)
EOF
}

tree_mib() {  # what a device call sends besides `carry`: tracked and untracked-not-ignored files
  git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 \
    | awk '{ printf "%d", $1 / 1048576 + 1 }'
}

prepare() {
  mkdir -p "$WHEELS"
  case "$WHEELS" in  # ignored: it travels only where a call names it in `carry`
    /*) ;;
    *) mkdir -p .git/info && { grep -qx "/$WHEELS/" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >> .git/info/exclude; } ;;
  esac
  local tree
  tree=$(tree_mib)
  [ -n "$PART_MB" ] || PART_MB=$((62 - tree))
  echo "the working tree sends $tree MiB with each call: parts of $PART_MB MiB"
  local platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
                   --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  local packages=(${GPU_VISIT_PACKAGES:-diffusers open_clip_torch onnxruntime-gpu polygraphy onnx-graphsurgeon})
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$WHEELS/download" -c constraints.txt "${packages[@]}" || return 1
  local wheel
  for wheel in "$WHEELS"/download/*.whl; do  # deflate leaves CUDA's fat binaries 19% smaller, LZMA 34%
    (( $(stat -c %s "$wheel") > PART_MB * 1024 * 1024 )) && { lzma_wheel "$wheel" || return 1; }
  done
  # One stream, the big wheels cut into PART_MB pieces, one per numbered folder (a call each); the
  # small wheels ride in the last folder where they fit, else in one of their own.
  local n=1 part small=0
  for wheel in "$WHEELS"/download/*.whl; do
    (( $(stat -c %s "$wheel") > PART_MB * 1024 * 1024 )) || { small=$((small + $(stat -c %s "$wheel"))); continue; }
    rm -rf "$WHEELS/split" && mkdir -p "$WHEELS/split"
    split -b "${PART_MB}M" "$wheel" "$WHEELS/split/$(basename "$wheel").part-"
    for part in "$WHEELS"/split/*; do
      mkdir -p "$WHEELS/$n" && mv "$part" "$WHEELS/$n/" && n=$((n + 1))
    done
    rm -f "$wheel"
  done
  local last=$((n > 1 ? n - 1 : 1))
  [ -d "$WHEELS/$last" ] && (( $(du -sb "$WHEELS/$last" | cut -f1) + small > PART_MB * 1024 * 1024 )) && last=$n
  mkdir -p "$WHEELS/$last" && mv "$WHEELS"/download/*.whl "$WHEELS/$last/" 2>/dev/null
  rm -rf "$WHEELS/download" "$WHEELS/split"
  echo "carry one of these folders per call (with the tree, under 64 MiB): $(cd "$WHEELS" && ls -d -- */ | tr '\n' ' ')"
  du -sh "$WHEELS"/*/
}

stash() {  # a carried folder replaces .whl/ there, dropping the earlier calls' parts: keep them outside
  mkdir -p "$STASH"
  [ -d "$WHEELS" ] && find "$WHEELS" -type f \( -name '*.whl' -o -name '*.whl.part-*' \) -exec cp {} "$STASH"/ \;
  ls -l "$STASH"
}

install_wheels() {
  [ -d "$WHEELS" ] || { echo "no $WHEELS/: using the image's packages as they are"; return 0; }
  local joined=$SITE.wheels
  rm -rf "$joined" && mkdir -p "$joined"
  find "$WHEELS" -type f -name '*.whl' -exec cp {} "$joined"/ \;
  # Every wheel cut in parts (NAME.whl.part-aa, -ab, ... in any numbered folder), joined in order.
  local first name
  local -a parts
  while IFS= read -r first; do
    name=$(basename "${first%.part-aa}")
    mapfile -t parts < <(find "$WHEELS" -name "$name.part-*" -printf '%f\t%p\n' | sort | cut -f2)
    cat "${parts[@]}" > "$joined/$name"
    if ! "$PY" -c "import sys, zipfile; assert zipfile.ZipFile(sys.argv[1]).testzip() is None" "$joined/$name" \
        2>/dev/null; then
      echo "$name: its ${#parts[@]} parts do not make a whole wheel (one still to carry?): left out"
      rm -f "$joined/$name"
    fi
  done < <(find "$WHEELS" -type f -name '*.whl.part-aa')
  ls "$joined"/*.whl >/dev/null 2>&1 || return 0
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$joined"/*.whl || return 1
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
}

clean_copy() {
  local clean=$CLEAN
  rm -rf "$clean" && mkdir -p "$clean"
  if git rev-parse --git-dir >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -c 2>/dev/null \
      | tar -x -C "$clean"  # a tracked file the visit left behind (the trained weights) is not needed
  else
    tar --exclude="./$WHEELS" --exclude=./.venv --exclude=./out --exclude=./models --exclude='*.onnx' \
      --exclude='*.onnx.data' --exclude=__pycache__ -c . | tar -x -C "$clean"
  fi
  echo "$clean"
}

check() {
  mkdir -p "$OUT"
  [ -d "$WHEELS" ] && { stash >/dev/null; WHEELS=$STASH; }
  install_wheels || { echo "installing the wheels failed"; return 1; }
  { nvidia-smi; echo; "$PY" -m pip list 2>/dev/null; echo; echo "PYTHONPATH=${PYTHONPATH:-}"; } \
    > "$OUT/machine.txt" 2>&1
  local clean
  clean=$(clean_copy)
  cd "$clean" || return 1
  export PYTHONPATH="$clean${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  timeout --signal=TERM --kill-after=10 "$LIMIT_S" "$PY" -m outpaint.cli bench --gpu-check --model "$MODEL" \
    --out "$OUT/gpu-check.json" --check-budget-s "$BUDGET_S" "$@" 2>&1 | tee "$OUT/gpu-check.log"
  local status=${PIPESTATUS[0]}
  [ "$status" = 124 ] && echo "the visit's time limit of $LIMIT_S s ended the check" | tee -a "$OUT/gpu-check.log"
  return "$status"
}

case "$MODE" in
  prepare) prepare ;;
  stash) stash ;;
  check) check "$@" ;;
  *) sed -n 2,20p "$0"; exit 2 ;;
esac
