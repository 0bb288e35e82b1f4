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
PART_MB=${PART_MB:-30}
OUT=${OUT:-$PWD/out/gpu-visit}
LIMIT_S=${GPU_CHECK_LIMIT_S:-510}    # the check itself: its budget, then its report and process exits
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}  # the check's own budget (the issue's 8 minutes)
MODEL=${GPU_CHECK_MODEL:-/tmp/outpaint-gpu-check-model}  # kept on a warm machine: a re-run reuses it
SITE=${GPU_VISIT_SITE:-/tmp/outpaint-site}     # where the wheels are installed (--target)
CLEAN=${GPU_VISIT_CLEAN:-/tmp/outpaint-clean}  # the clean copy the check runs from

prepare() {
  mkdir -p "$WHEELS"
  local platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
                   --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  local packages=(${GPU_VISIT_PACKAGES:-diffusers onnxruntime-gpu polygraphy onnx-graphsurgeon})
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$WHEELS/download" -c constraints.txt "${packages[@]}" || return 1
  local n=1 wheel part
  for wheel in "$WHEELS"/download/*.whl; do
    if (( $(stat -c %s "$wheel") > PART_MB * 1024 * 1024 )); then
      rm -rf "$WHEELS/split" && mkdir -p "$WHEELS/split"
      split -b "${PART_MB}M" "$wheel" "$WHEELS/split/$(basename "$wheel").part-"
      for part in "$WHEELS"/split/*; do  # one part per numbered folder: one folder per call
        mkdir -p "$WHEELS/$n" && mv "$part" "$WHEELS/$n/" && n=$((n + 1))
      done
    else
      mkdir -p "$WHEELS/0" && mv "$wheel" "$WHEELS/0/"
    fi
  done
  rm -rf "$WHEELS/download" "$WHEELS/split"
  case "$WHEELS" in
    /*) ;;
    *) grep -qx "/$WHEELS/" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >> .git/info/exclude ;;
  esac
  echo "carry one of these folders per call (with the tree, under 64 MiB): $(cd "$WHEELS" && ls -d -- */ | tr '\n' ' ')"
  du -sh "$WHEELS"/*/
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
    git ls-files -z --cached --others --exclude-standard | tar --null -T - -c | tar -x -C "$clean"
  else
    tar --exclude="./$WHEELS" --exclude=./.venv --exclude=./out --exclude=./models --exclude='*.onnx' \
      --exclude='*.onnx.data' --exclude=__pycache__ -c . | tar -x -C "$clean"
  fi
  echo "$clean"
}

check() {
  mkdir -p "$OUT"
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
  check) check "$@" ;;
  *) sed -n 2,20p "$0"; exit 2 ;;
esac
