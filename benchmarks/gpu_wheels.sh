#!/usr/bin/env bash
# Run HERE (a machine with PyPI) before a GPU check: fills benchmarks/wheels/
# (git-ignored) with what benchmarks/gpu_check.sh needs on the GPU machine and
# cannot fetch there.
#
#   bash benchmarks/gpu_wheels.sh            # wheels + the SmolLM2 config/tokenizer
#   bash benchmarks/gpu_wheels.sh --gguf-parts  # also the GGUF in <= 40 MiB parts
#
# 1. Wheels for the GPU machine's Python (3.12, manylinux x86-64), no
#    dependencies: the packages its image lacks (its list is in the device
#    notes: torch, transformers, accelerate, einops, jaxtyping, peft, hypothesis,
#    pyarrow, pandas, xxhash are there). Versions are those this project's venv
#    was tested with.
# 2. benchmarks/wheels/smollm2-skeleton/: SmolLM2-135M-Instruct's config and
#    tokenizer (about 3.5 MB) from the converted model in $MIPO_CACHE or
#    ~/.cache/mipo. The converted weights (514 MiB) and the GGUF (94 MiB) are
#    over the 64 MiB a device call carries, so by default gpu_check.sh runs a
#    RANDOMLY initialised model of the same shapes (time and memory are
#    SmolLM2's, losses are not).
# 3. --gguf-parts: the GGUF split into benchmarks/wheels/gguf-parts/*.part-NN
#    (three parts of at most 40 MiB). To run on the real weights, carry one part
#    per call into a folder that stays on the warm machine (e.g. copy it to
#    /tmp/mipo_cache/ there), then run gpu_check.sh with MIPO_CACHE=/tmp/mipo_cache:
#    it joins the parts and converts them (mipo.training.assets, about 30 s).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=$ROOT/benchmarks/wheels
PY=${PYTHON:-$ROOT/.venv/bin/python}
CACHE=${MIPO_CACHE:-$HOME/.cache/mipo}
mkdir -p "$DEST"

PACKAGES=(
  pot==0.9.7.post1        # mipo (OTPO's reference solver) and the OTPO benchmark
  beartype==0.23.1        # mipo
  gguf==0.19.0            # mipo.training.assets (converting SmolLM2)
  datasets==5.2.0         # mipo.data and TRL
  dill==0.4.1             # datasets
  multiprocess==0.70.19   # datasets
  trl==1.16.0             # benchmarks/dpo_vs_trl.py
  liger-kernel==0.8.5     # the TRL + Liger column (Triton is in the image)
)
PLATFORMS=(
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux1_x86_64
)
for package in "${PACKAGES[@]%%#*}"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d "$DEST" "$package"
done

SOURCE=$CACHE/smollm2-135m-instruct
if [[ -f $SOURCE/config.json ]]; then
  mkdir -p "$DEST/smollm2-skeleton"
  for name in config.json generation_config.json tokenizer.json \
      tokenizer_config.json chat_template.jinja special_tokens_map.json; do
    if [[ -f $SOURCE/$name ]]; then cp "$SOURCE/$name" "$DEST/smollm2-skeleton/"; fi
  done
else
  echo "no converted SmolLM2 at $SOURCE: run python -c 'import mipo.training.assets as a; a.smollm2_dir()' first" >&2
fi

if [[ "${1:-}" == "--gguf-parts" ]]; then
  GGUF=$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf
  mkdir -p "$DEST/gguf-parts"
  split -b 40M -d "$GGUF" "$DEST/gguf-parts/$(basename "$GGUF").part-"
fi

ls -la "$DEST" "$DEST/smollm2-skeleton" 2>/dev/null
du -sh "$DEST"
