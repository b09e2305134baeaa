#!/usr/bin/env bash
# The GPU day in one script (the device tool's H200: 15 device-minutes per task, all tries
# together, so it must work the first time). Runs from the repo root, logs under $OUT (7 files:
# the device tool brings back 8 at most), about 4 min, 8.5 at worst (every step's limit):
#   1. installs the CUDA builds: torch==2.13.0 (CUDA wheel; kept as the image's torch when no
#      wheel can be had), mooncake-transfer-engine (the CUDA build, not -non-cuda), nixl, then
#      the project with the extras the Makefile picks on a GPU machine (mooncake-cuda, nixl,
#      test, bench: [all] would pull mooncake-transfer-engine-non-cuda over the CUDA build);
#      from ./.whl when present (the device machine cannot reach PyPI), else from the index;
#   2. the CUDA tests: pytest -m gpu (tests/model_executor/test_cuda.py and every test marked gpu);
#   3. benchmarks/gpu_check.py compare: unified CUDA server vs 1P1D over NIXL (VRAM registered)
#      and over Mooncake TCP, greedy outputs identical, qwen3-0.6b shape;
#   4. benchmarks/gpu_check.py roofline: decode tok/s at batch 1 and 32 against H200 HBM.
#
#   benchmarks/gpu_check.sh                 # on the GPU machine
#   benchmarks/gpu_check.sh --dry-run       # on a CPU machine: syntax, plan, compile, CPU half
#   benchmarks/gpu_check.sh --fetch-wheels  # here, before a GPU day: wheels into ./.whl
# Device tool call: command "benchmarks/gpu_check.sh", carry [".whl"], timeout_s 540.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-run}"
OUT="${OUT:-$(mktemp -d /tmp/gpu-check-XXXXXX)}"
mkdir -p "$OUT"
PY_FILES=(benchmarks/gpu_check.py benchmarks/bench_pd.py benchmarks/bench_engine.py
          tests/model_executor/test_cuda.py sglang/test/server_utils.py)
CUDA_PKGS=("torch==2.13.0" "mooncake-transfer-engine" "nixl")
EXTRAS="mooncake-cuda,nixl,test,bench"
BACKENDS="${GPU_CHECK_BACKENDS:-nixl mooncake_tcp}"
declare -A RC=()

step() {  # step NAME TIMEOUT_S CMD...: runs CMD, log in $OUT/NAME.log, rc kept for the summary
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  RC[$name]=$?
  echo "   rc=${RC[$name]} in $((SECONDS - t0))s; last lines:"
  tail -n 4 "$OUT/$name.log" | sed 's/^/   | /'
}

pip_src() {  # where pip installs from
  if [ -d .whl ]; then echo "--no-index --find-links .whl"; else echo ""; fi
}

summary() {  # the last line: JSON of every step's rc
  local ok=true parts=()
  for k in "${!RC[@]}"; do
    parts+=("\"$k\": ${RC[$k]}")
    [ "${RC[$k]}" = 0 ] || ok=false
  done
  local IFS=,
  echo "{\"gpu_check\": \"$MODE\", \"out\": \"$OUT\", \"steps\": {${parts[*]}}, \"ok\": $ok}" \
    | tee "$OUT/summary.json"
  [ "$ok" = true ]
}

case "$MODE" in
--fetch-wheels)
  # Python 3.12 manylinux wheels for the device image (its torch stays unless a 2.13.0 wheel
  # fits the 64 MiB the tool carries, which a CUDA torch does not).
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
  python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl mooncake-transfer-engine nixl pyzmq fastapi \
    uvicorn orjson "sglang-router==0.3.2" pytest-timeout
  du -sh .whl
  exit $?
  ;;
--dry-run)
  PY=".venv/bin/python"; [ -x "$PY" ] || PY=python3
  echo "gpu_check dry run (CPU): logs in $OUT"
  step syntax 10 bash -n "$0"
  echo "install plan on the GPU machine (pip source: ${GPU_PIP_SRC:-./.whl if present, else the index}):"
  echo "   python3 -m pip install ${CUDA_PKGS[0]} || keep the image's torch (printed)"
  echo "   python3 -m pip install ${CUDA_PKGS[*]:1}"
  echo "   python3 -m pip install -e .[$EXTRAS]"
  step compile 60 "$PY" -m py_compile "${PY_FILES[@]}"
  # shellcheck disable=SC2086
  step compare_cpu 240 "$PY" benchmarks/gpu_check.py compare --device cpu --preset tiny \
    --backends $BACKENDS --log-dir "$OUT/servers"
  step roofline_cpu 120 "$PY" benchmarks/gpu_check.py roofline --device cpu --preset tiny \
    --reps 1
  summary
  exit $?
  ;;
run) ;;
*) echo "usage: $0 [--dry-run | --fetch-wheels]" >&2; exit 2 ;;
esac

# ---- on the GPU machine ----------------------------------------------------------------------
PY=python3
echo "gpu_check on $(nvidia-smi -L 2>&1 | head -1); logs in $OUT"
nvidia-smi >"$OUT/nvidia-smi.log" 2>&1
SRC=$(pip_src)
# shellcheck disable=SC2086
step install 150 bash -c "set -x; $PY -m pip install -q $SRC '${CUDA_PKGS[0]}' || \
  echo 'no torch 2.13.0 CUDA wheel reachable: keeping the image torch'; \
  $PY -m pip install -q $SRC ${CUDA_PKGS[*]:1} || echo 'CUDA mooncake/nixl install FAILED'; \
  $PY -m pip install -q $SRC -e '.[$EXTRAS]' || $PY -m pip install -q $SRC --no-deps -e .; \
  $PY -c 'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.cuda.is_available())'; \
  $PY -m pip list 2>/dev/null | grep -i -E '^(torch|mooncake|nixl|sglang) '"
step pytest_gpu 90 "$PY" -m pytest tests -m gpu -q -rs -p no:cacheprovider
# shellcheck disable=SC2086
step compare_cuda 180 "$PY" benchmarks/gpu_check.py compare --device cuda --preset qwen3-0.6b \
  --backends $BACKENDS --log-dir "$OUT/servers"
step roofline_cuda 90 "$PY" benchmarks/gpu_check.py roofline --device cuda --preset qwen3-0.6b
tar czf "$OUT/servers.tgz" -C "$OUT" servers 2>/dev/null && rm -rf "$OUT/servers"
summary
