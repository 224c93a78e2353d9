#!/usr/bin/env bash
# One command on a GPU machine: the gpu tests, then the engine's and distillation's throughput, then candidates/hour
# with 1, 4 and 8 candidate trainings packed on the GPU. At most ~8 minutes on one H100.
#
#   bash scripts/gpu_wheels.sh               # beforehand, where PyPI is reachable: fills scripts/gpu_wheels/
#   bash scripts/gpu_check.sh OUT            # on the GPU machine, in the repository root (offline is fine)
#   GPU_CHECK_ALLOW_CPU=1 bash scripts/gpu_check.sh /tmp/gc   # plumbing dry run on a CPU machine, tiny sizes
#
# Writes OUT/gpu_figures.json (every stage's figures, merged after each stage, so a stage that fails or hangs
# leaves the others' figures) and OUT/gpu_check.log. Each stage has its own timeout, and all of them share one
# budget (GPU_CHECK_BUDGET_S, default 470 s). kdnas's missing dependencies are installed offline from
# scripts/gpu_wheels/ (pip --no-index); the log and the JSON say which. Stage timeouts: T_PYTEST (190 s),
# T_TRAIN (110), T_DISTILL (50), T_PACKING (110). Exit status 0 when every stage passed, else 1 (figures written
# either way); 2 when no CUDA device (and no GPU_CHECK_ALLOW_CPU=1) or no Python with torch.
set -uo pipefail

OUT=${1:?usage: bash scripts/gpu_check.sh OUTDIR}
mkdir -p "$OUT/parts" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
REPO=$(pwd)
LOG=$OUT/gpu_check.log
FIG=$OUT/gpu_figures.json
exec > >(tee -a "$LOG") 2>&1
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-470}
WHEELS=$REPO/scripts/gpu_wheels
export WANDB_MODE=disabled PYTHONUNBUFFERED=1 KDNAS_CACHE_DIR=$OUT/kdnas-cache
echo "== gpu_check $(date -u +%FT%TZ) in $REPO -> $OUT (budget ${BUDGET}s)"

# -- the interpreter: the first that imports torch --------------------------------------------------------------
PY=""
for cand in ${PYTHON:-} python3 python; do
  if command -v "$cand" >/dev/null && "$cand" -c "import torch" 2>/dev/null; then PY=$(command -v "$cand"); break; fi
done
[ -n "$PY" ] || { echo "no python with torch found (set PYTHON=...)"; exit 2; }
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$CUDA" = 1 ]; then
  DEVICE=cuda; TINY=${GPU_CHECK_TINY:-0}
elif [ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ]; then
  DEVICE=cpu; TINY=1; echo "!! no CUDA: GPU_CHECK_ALLOW_CPU=1 dry run on the CPU with tiny sizes (figures mean nothing)"
else
  echo "no CUDA device visible to $PY (GPU_CHECK_ALLOW_CPU=1 for a CPU dry run)"; exit 2
fi

remaining() { echo $(( BUDGET - ($(date +%s) - START) )); }

merge() {  # parts/*.json -> gpu_figures.json
  "$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
figures = {"schema_version": 1, "stages": {}}
for part in sorted((out / "parts").glob("*.json")):
    try:
        data = json.loads(part.read_text())
    except (OSError, json.JSONDecodeError) as e:
        data = {"error": f"unreadable: {e}"}
    if part.stem == "setup":
        figures["setup"] = data
    else:
        figures["stages"][part.stem] = data
(out / "gpu_figures.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
EOF
}

stage_record() {  # name rc seconds timeout [figures.json]: the stage's status + its figures -> parts/NAME.json
  "$PY" - "$OUT/parts/$1.json" "$2" "$3" "$4" "${5:-}" <<'EOF'
import json, sys
from pathlib import Path
path, rc, seconds, limit, figures = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
record = {"rc": rc, "seconds": seconds, "timeout_s": limit, "timed_out": rc in (124, 137),
          "status": "ok" if rc == 0 else ("timeout" if rc in (124, 137) else "failed")}
if figures and Path(figures).is_file():
    try:
        record["figures"] = json.loads(Path(figures).read_text())
    except json.JSONDecodeError as e:
        record["figures_error"] = str(e)
Path(path).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
EOF
  merge
}

run_stage() {  # name timeout figures.json post command...: run under its own timeout (cut to the budget left), then
  local name=$1 limit=$2 figures=$3 post=$4; shift 4  # `post` (a function, or -) even after a timeout
  local left; left=$(remaining)
  if [ "$left" -lt 20 ]; then
    echo "== $name: skipped, budget spent"; stage_record "$name" 125 0 0; return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (timeout ${limit}s): $*"
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$@"
  local rc=$?
  [ "$post" = - ] || "$post"
  echo "== $name: rc=$rc in $(( $(date +%s) - t0 ))s"
  stage_record "$name" "$rc" "$(( $(date +%s) - t0 ))" "$limit" "$figures"
}

# -- setup: kdnas's missing dependencies from the wheels beside this script, offline -----------------------------
pip_offline() {  # an externally managed Python refuses plain installs: then --break-system-packages, then --user
  "$PY" -m pip install --no-index --find-links "$WHEELS" --disable-pip-version-check -q "$@" \
    || "$PY" -m pip install --no-index --find-links "$WHEELS" --disable-pip-version-check -q --break-system-packages "$@" \
    || "$PY" -m pip install --no-index --find-links "$WHEELS" --disable-pip-version-check -q --user "$@"
}
MODULES=(hydra:hydra-core omegaconf:omegaconf antlr4:antlr4-python3-runtime yaml:PyYAML tqdm:tqdm pytest:pytest
         pytest_timeout:pytest-timeout submitit:submitit joblib:joblib
         hydra_plugins.hydra_submitit_launcher:hydra-submitit-launcher
         hydra_plugins.hydra_joblib_launcher:hydra-joblib-launcher)
missing=()
for pair in "${MODULES[@]}"; do
  "$PY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair#*:}")
done
install_rc=0
if [ ${#missing[@]} -gt 0 ]; then
  echo "== setup: installing from $WHEELS (offline): ${missing[*]}"
  [ -d "$WHEELS" ] || echo "!! $WHEELS is missing: run bash scripts/gpu_wheels.sh where PyPI is reachable"
  pip_offline "${missing[@]}" || install_rc=$?
else
  echo "== setup: every dependency already importable"
fi
kdnas_install=editable
if ! "$PY" -c "import kdnas, sys; sys.exit(0 if kdnas.__file__.startswith('$REPO/') else 1)" 2>/dev/null; then
  pip_offline --no-deps -e "$REPO" || kdnas_install=failed
fi
if ! "$PY" -c "import kdnas" 2>/dev/null; then  # no editable install possible: the source tree itself
  export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH}; kdnas_install=PYTHONPATH
fi
"$PY" - "$OUT/parts/setup.json" "$install_rc" "$kdnas_install" "$DEVICE" "$TINY" "${missing[*]:-}" <<'EOF'
import json, platform, sys
import torch
path, rc, how, device, tiny, missing = sys.argv[1:7]
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "device": device, "tiny_sizes": tiny == "1", "installed_offline": missing.split(), "install_rc": int(rc),
        "kdnas_install": how, "host_cpus": len(__import__("os").sched_getaffinity(0))}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), gpu_count=torch.cuda.device_count(),
                cudnn=torch.backends.cudnn.version(), bf16_supported=torch.cuda.is_bf16_supported())
try:
    import kdnas
    info["kdnas"] = kdnas.__version__
except Exception as e:  # noqa: BLE001 - recorded, the stages will say more
    info["kdnas_import_error"] = repr(e)
open(path, "w").write(json.dumps(info, indent=2, sort_keys=True) + "\n")
print(json.dumps(info))
EOF
merge

# -- sizes ------------------------------------------------------------------------------------------------------
if [ "$TINY" = 1 ]; then
  TRAIN_ARGS=(--model resnet8 --batch-size 32 --steps 3 --repeats 1 --max-train-per-class 40 --configs fp32,bf16_cl)
  DISTILL_ARGS=(--pairs resnet14:resnet8 --batch-size 16 --steps 2 --repeats 1 --max-train-per-class 10)
  PACK_ARGS=(--workers 1,2 --per-worker 1 --teacher resnet8 --batch-size 16 --max-train-per-class 20 --max-steps 2
             --threads 1)
  PYTEST_K=(-k "not compile and not torchrun and not pool")
  [ "$DEVICE" = cpu ] && export KDNAS_GPU_TEST_DEVICE=cpu  # the device-generic gpu tests run on the CPU instead
else
  TRAIN_ARGS=(--model resnet56 --batch-size 128 --steps 30 --repeats 3 --amp bf16
              --configs fp32,fp32_cl,bf16_cl,bf16_cl_compile)
  DISTILL_ARGS=(--pairs resnet32x4:resnet8x4,resnet56:resnet20 --batch-size 128 --steps 20 --repeats 5
                --max-train-per-class 500 --amp bf16)
  PACK_ARGS=(--workers 1,4,8 --per-worker 2 --teacher resnet20)
  PYTEST_K=()
fi

# -- 1. the gpu tests -------------------------------------------------------------------------------------------
PYTEST_OUT=$OUT/pytest_gpu.txt
pytest_figures() {  # from the -v lines, so a run cut by its timeout still reports the tests it finished
  "$PY" - "$PYTEST_OUT" "$OUT/pytest_gpu.json" <<'EOF'
import json, os, re, sys
text = open(sys.argv[1]).read() if os.path.exists(sys.argv[1]) else ""
results = dict(re.findall(r"^(tests/\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", text, re.M))
counts = {k: sum(v == k for v in results.values()) for k in ("PASSED", "FAILED", "SKIPPED", "ERROR")}
json.dump({"counts": counts, "tests": results, "durations": re.findall(r"^(\d+\.\d+s call\s+\S+)", text, re.M)},
          open(sys.argv[2], "w"), indent=2)
EOF
}
# deterministic cuBLAS for the resume tests (trainer.deterministic=true); the benchmarks run without it
run_stage pytest_gpu "${T_PYTEST:-190}" "$OUT/pytest_gpu.json" pytest_figures env CUBLAS_WORKSPACE_CONFIG=:4096:8 bash -c '
  "$0" -m pytest tests/test_gpu.py -m gpu -v -rA -p no:cacheprovider -o timeout=150 --durations=15 "${@:2}" 2>&1 \
    | tee "$1"; exit ${PIPESTATUS[0]}' "$PY" "$PYTEST_OUT" "${PYTEST_K[@]}"

# -- 2. engine vs hand-written loop; AMP bf16 + channels_last vs fp32, with and without torch.compile -------------
run_stage bench_train "${T_TRAIN:-110}" "$OUT/bench_train.json" - \
  "$PY" scripts/bench_train.py --device "$DEVICE" "${TRAIN_ARGS[@]}" --json "$OUT/bench_train.json"

# -- 3. cached KD / CE and online KD / CE ------------------------------------------------------------------------
run_stage bench_distill "${T_DISTILL:-50}" "$OUT/bench_distill.json" - \
  "$PY" scripts/bench_distill.py --device "$DEVICE" "${DISTILL_ARGS[@]}" --json "$OUT/bench_distill.json"

# -- 4. candidates per hour, 1 / 4 / 8 candidate trainings packed on the device -----------------------------------
run_stage bench_packing "${T_PACKING:-110}" "$OUT/bench_packing.json" - \
  "$PY" scripts/bench_packing.py --device "$DEVICE" "${PACK_ARGS[@]}" --json "$OUT/bench_packing.json" \
  --cache-dir "$OUT/kdnas-cache"

merge
echo "== done in $(( $(date +%s) - START ))s: $FIG"
"$PY" - "$FIG" <<'EOF'
import json, sys
f = json.load(open(sys.argv[1]))
for name, s in f["stages"].items():
    print(f"  {name:14s} {s['status']:8s} {s['seconds']:4d}s")
sys.exit(0 if all(s["status"] == "ok" for s in f["stages"].values()) else 1)  # figures are in the JSON either way
EOF
