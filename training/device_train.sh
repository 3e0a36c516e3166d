#!/usr/bin/env bash
# Train several runs at once on a lent GPU machine, with Keras on JAX, from a copy of the
# training and validation images that a split manifest names; pack the run folders for home.
#
# The machine has JAX and Pillow but no TensorFlow: Keras and its two missing pure
# dependencies travel as wheels in .whl/ (README, "Training on a GPU machine"). Each run is an ordinary
# `python -m training.cli train` with the manifest's split; export and evaluation happen
# back on the CPU machine with TensorFlow, where the .keras files load unchanged.
#
# Usage: training/device_train.sh DATA_DIR MANIFEST SECONDS_PER_RUN OUT_DIR NAME:SEED:STAIN_SHARE[:MANIFEST[:OPTIONS]]...
# TRAIN_OPTIONS (environment) adds options to every run, e.g. "--blur-share 0.4"; a run's own
# OPTIONS are comma-separated, e.g. --epochs=40,--blur-share=0.4 (an empty MANIFEST: the default).
#   e.g. training/device_train.sh .devdata/all-taleqani models/split.csv 420 "$OUT" s0:0:0 t0:0:0.5 b0:0:0::--epochs=40
# The run folders come back in runs-device-<n>.tgz, RUNS_PER_PACK (default 6) runs each, as the
# device tool returns files of at most 16 MiB.
set -u
data=$1 manifest=$2 limit=$3 out=$4
shift 4
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, keras; print('jax', jax.__version__, 'keras', keras.__version__, jax.devices())" || exit 1
mkdir -p runs-device
started=$(date +%s)
for spec in "$@"; do
    IFS=: read -r name seed share run_manifest options <<<"$spec"
    # stop after the epoch past the limit; `timeout` only if an epoch hangs
    timeout $((limit + 120)) python3 -m training.cli train --time-limit "$limit" --manifest "${run_manifest:-$manifest}" --data-dir "$data" --seed "$seed" \
        --split-seed 0 --stain-transfer "$share" --workers 2 --out "runs-device/$name" ${TRAIN_OPTIONS:-} ${options//,/ } \
        >"runs-device/$name.log" 2>&1 &
done
wait
echo "all runs ended after $(( $(date +%s) - started )) s"
names=()
for spec in "$@"; do
    name=${spec%%:*}
    names+=("$name")
    if [ -f "runs-device/$name/model.keras" ]; then status=done; else status=FAILED; fi
    echo "$name $status: $(grep -E '^Epoch|val_loss' "runs-device/$name.log" | tail -1)"
    grep -E 'trained in|Error|error' "runs-device/$name.log" | tail -2
done
per_pack=${RUNS_PER_PACK:-6}
for ((i = 0; i < ${#names[@]}; i += per_pack)); do
    pack=()
    for name in "${names[@]:i:per_pack}"; do pack+=("runs-device/$name" "runs-device/$name.log"); done
    tar czf "$out/runs-device-$((i / per_pack)).tgz" --ignore-failed-read "${pack[@]}"
done
