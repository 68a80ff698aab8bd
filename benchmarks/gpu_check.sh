#!/usr/bin/env bash
# The GPU check in one script: at most ~8 minutes on one H200.
#
#   bash benchmarks/gpu_check.sh                # on the GPU machine, repo root
#   bash benchmarks/gpu_check.sh --cpu-dry-run  # here: every part at toy size on CPU
#
# Parts, in order, each under its own time cap (the whole run under
# GPU_CHECK_BUDGET_S, default 470 s); a part that fails or runs out of time is
# recorded and the next one runs:
#   model       the SmolLM2 to use (benchmarks/gpu_check.py model: $MIPO_CACHE's
#               converted model, else its GGUF, else random init with SmolLM2's
#               config and tokenizer from benchmarks/wheels/smollm2-skeleton)
#   memory      loss-head memory against T, eager vs chunked (logps_memory.py)
#   otpo        OTPO's batched Sinkhorn vs the per-pair POT loops (otpo_overhead.py)
#   dpo_vs_trl  DPO step time and peak memory, mipo vs TRL (and TRL + Liger),
#               8 pairs x 1,024 tokens, bf16 autocast (dpo_vs_trl.py)
#   main_job    python -m mipo.train recipes/ti_dpo.py at the recipe's defaults
#   recipes     every shipped recipe, 3 steps in bf16: finite, and the loss moves
# Output: gpu_check.json, gpu_check.md and gpu_check.log in $OUT (the device
# tool's folder) or ./gpu_check_out.
#
# Packages the GPU machine lacks (POT, beartype, gguf, trl, datasets, ...) are
# installed from benchmarks/wheels/*.whl, which benchmarks/gpu_wheels.sh
# downloads here; carry benchmarks/wheels with the call.
set -uo pipefail

DRY=0
if [[ "${1:-}" == "--cpu-dry-run" ]]; then
  DRY=1
elif [[ $# -gt 0 ]]; then
  echo "usage: bash benchmarks/gpu_check.sh [--cpu-dry-run]" >&2
  exit 2
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
OUT_DIR=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT_DIR"
if [[ -z "${OUT:-}" ]]; then
  echo '*' > "$OUT_DIR/.gitignore"  # a local output folder ignores itself
fi
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
LOG=$WORK/gpu_check.log
: > "$WORK/status.txt"

if [[ -n "${PYTHON:-}" ]]; then
  PY=$PYTHON
elif [[ $DRY == 1 && -x "$ROOT/.venv/bin/python" ]]; then
  PY=$ROOT/.venv/bin/python
else
  PY=python3
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

BUDGET=${GPU_CHECK_BUDGET_S:-470}
[[ $DRY == 1 ]] && BUDGET=${GPU_CHECK_BUDGET_S:-1500}
START=$SECONDS

log() { echo "[gpu_check $(( SECONDS - START ))s] $*" | tee -a "$LOG"; }

# run_part NAME CAP_SECONDS COMMAND...: stdout+stderr to WORK/NAME.log (and the
# combined log), exit code to status.txt; CAP is cut to the budget left.
run_part() {
  local name=$1 cap=$2
  shift 2
  local left=$(( BUDGET - (SECONDS - START) - 15 ))
  (( cap > left )) && cap=$left
  if (( cap < 10 )); then
    log "$name: skipped, time budget spent"
    echo "$name skipped-budget" >> "$WORK/status.txt"
    return
  fi
  log "$name: start (cap ${cap}s)"
  PART_CAP=$cap timeout --signal=TERM --kill-after=10 "$cap" "$@" \
    > "$WORK/$name.log" 2>&1
  local code=$?
  cat "$WORK/$name.log" >> "$LOG"
  [[ $code == 124 ]] && code="124-timeout"
  echo "$name $code" >> "$WORK/status.txt"
  log "$name: exit $code"
}

log "root $ROOT, python $PY, dry run $DRY, budget ${BUDGET}s, work $WORK"
if [[ $DRY == 0 ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
  if compgen -G "benchmarks/wheels/*.whl" > /dev/null; then
    log "installing $(ls benchmarks/wheels/*.whl | wc -l) wheels into /tmp/mipo_site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/mipo_site benchmarks/wheels/*.whl >> "$LOG" 2>&1 \
      || log "wheel install FAILED (see log)"
    export PYTHONPATH=/tmp/mipo_site:$PYTHONPATH
  else
    log "no benchmarks/wheels/*.whl: POT, trl, ... must already be installed"
  fi
fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)" 2>&1 | tee -a "$LOG"

GC="$PY benchmarks/gpu_check.py"
DRYFLAG=()
[[ $DRY == 1 ]] && DRYFLAG=(--dry-run)

# --- model -------------------------------------------------------------------
run_part model 60 $GC model --work "$WORK" --json "$WORK/model.json" "${DRYFLAG[@]}"
MODEL=$(tail -n 1 "$WORK/model.log")
if [[ ! -f "$MODEL/config.json" ]]; then
  log "no model ($MODEL); the parts that need one will fail"
fi

if [[ $DRY == 1 ]]; then
  DEVICE=cpu
  MEMORY_ARGS=(--lengths 16 32 --pairs 2 --hidden 32 --vocab 128 --chunk-size 16
               --eager-max-length 32)
  OTPO_ARGS=(--lengths 32 --pairs 2 --repeats 1 --threads 1)
  DPO_ARGS=(--pairs 2 --prompt-length 8 --completion-length 8 --warmup 0 --steps 1
            --threads 1)
  RECIPE_ARGS=(--batch-size 2 --budget-s 900)
else
  DEVICE=cuda
  MEMORY_ARGS=(--lengths 256 512 1024 2048 4096 8192 --pairs 8 --chunk-size 1024
               --eager-max-length 4096)
  OTPO_ARGS=(--lengths 256 1024 --pairs 8 --repeats 2 --threads 8)
  DPO_ARGS=(--pairs 8 --prompt-length 512 --completion-length 512 --warmup 2 --steps 5
            --threads 8)
  RECIPE_ARGS=(--batch-size 4 --budget-s 100)
fi

# --- loss-head memory against T ----------------------------------------------
run_part memory 45 "$PY" benchmarks/logps_memory.py --device "$DEVICE" \
  "${MEMORY_ARGS[@]}" --json "$WORK/memory.json"

# --- OTPO: batched Sinkhorn vs per-pair POT ----------------------------------
run_part otpo 50 "$PY" benchmarks/otpo_overhead.py --skip-step --device "$DEVICE" \
  "${OTPO_ARGS[@]}" --json "$WORK/otpo.json"

# --- DPO step: mipo vs TRL (vs TRL + Liger) ----------------------------------
run_part dpo_vs_trl 100 "$PY" benchmarks/dpo_vs_trl.py --device "$DEVICE" --bf16 \
  --model "$MODEL" "${DPO_ARGS[@]}" --json "$WORK/dpo_vs_trl.json"

# --- the main job, end to end ------------------------------------------------
run_part main_job 150 $GC main-job --work "$WORK" --model "$MODEL" \
  --json "$WORK/main_job.json" "${DRYFLAG[@]}"

# --- every recipe, 3 steps in bf16 -------------------------------------------
run_part recipes 120 $GC recipes --work "$WORK" --model "$MODEL" --steps 3 \
  --precision bf16 "${RECIPE_ARGS[@]}" --json "$WORK/recipes.json" "${DRYFLAG[@]}"

# --- summary -----------------------------------------------------------------
$GC summary --work "$WORK" --out "$OUT_DIR" "${DRYFLAG[@]}" >> "$LOG" 2>&1 \
  || log "summary FAILED"
log "done in $(( SECONDS - START ))s; results in $OUT_DIR"
tail -c 8000000 "$LOG" > "$OUT_DIR/gpu_check.log"
cat "$WORK/status.txt"
