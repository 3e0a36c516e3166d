#!/usr/bin/env bash
# Container smoke test: build the image with whatever models/ holds, start it the way
# production runs it (read-only root filesystem, tmpfs /tmp, CPU and memory limits, no
# capabilities), wait until ready, classify a real smear through /predict and the v2 infer
# endpoint, check the answers, stop it; then start it once more with a model mounted from the host and
# classify the smear again. Exits non-zero on any failure, printing the log.
#
# usage: bash docker/smoke-test.sh            (from anywhere; paths are from the repo root)
#   DSCNET_DATA_DIR      the dataset (default ../shared/data/all-taleqani)
#   CONTAINER_ENGINE     docker or podman (default: docker if its daemon answers, else podman)
#   DSCNET_IMAGE         the tag to build (default dscnet:smoke)
#   DSCNET_SMOKE_PORT    host port (default 18080)
#   DSCNET_READY_TIMEOUT seconds to wait for readiness (default 180)
#   DSCNET_MAX_IMAGE_MB  largest acceptable image (default 500)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${DSCNET_IMAGE:-dscnet:smoke}
NAME=dscnet-smoke-$$
PORT=${DSCNET_SMOKE_PORT:-18080}
DATA_DIR=${DSCNET_DATA_DIR:-../shared/data/all-taleqani}
READY_TIMEOUT=${DSCNET_READY_TIMEOUT:-180}
MAX_IMAGE_MB=${DSCNET_MAX_IMAGE_MB:-500}
URL=http://127.0.0.1:$PORT
WORK=$(mktemp -d)
STARTED=""

say() { printf 'smoke-test: %s\n' "$*"; }
fail() {
    printf 'smoke-test: FAILED: %s\n' "$*" >&2
    if [ -n "$STARTED" ]; then
        printf '%s\n' '----- container log -----' >&2
        "$ENGINE" logs "$NAME" >&2 2>&1 || true
        printf '%s\n' '-------------------------' >&2
    fi
    exit 1
}
cleanup() {
    [ -n "$STARTED" ] && "$ENGINE" rm -f "$NAME" >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- what the test needs -------------------------------------------------------------
if [ -n "${CONTAINER_ENGINE:-}" ]; then
    ENGINE=$CONTAINER_ENGINE
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    ENGINE=docker  # a docker client without a running daemon does not count
elif command -v podman >/dev/null 2>&1; then
    ENGINE=podman
else
    fail "no container engine: install docker or podman (on the CI machine: sh ../shared/tools/container-setup.sh)"
fi
for tool in curl python3; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is needed on the host"
done
for file in models/dscnet.onnx models/dscnet.json; do
    [ -f "$file" ] || fail "$file is missing: the image ships the model in models/ (train and export it first: dscnet train && dscnet export)"
done
SMEAR=$(find "$DATA_DIR" -type f -iname '*.jpg' 2>/dev/null | sort | head -n 1 || true)
[ -n "$SMEAR" ] || fail "no .jpg smear image under $DATA_DIR (set DSCNET_DATA_DIR)"
say "engine $ENGINE, image $IMAGE, smear $SMEAR"

# --- build ----------------------------------------------------------------------------
BUILD_ARGS=()
if [ "$ENGINE" = podman ]; then
    BUILD_ARGS+=(--format docker)  # the OCI format has no HEALTHCHECK
    if podman image exists python:3.11-slim; then
        BUILD_ARGS+=(--pull=never)  # a local base image (no registry on the CI machine)
    fi
fi
build_start=$(date +%s)
"$ENGINE" build "${BUILD_ARGS[@]}" -f docker/Dockerfile -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log" >&2; fail "the image did not build"; }
size_bytes=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
size_mb=$((size_bytes / 1000000))
say "built in $(($(date +%s) - build_start)) s; image size ${size_mb} MB"
[ "$size_mb" -le "$MAX_IMAGE_MB" ] || fail "the image is ${size_mb} MB, over the ${MAX_IMAGE_MB} MB target"

# --- start, as in production ------------------------------------------------------------
t0=$(python3 -c 'import time; print(time.time())')
# start_container WHAT [ENGINE RUN OPTIONS...]: the image as $NAME, with production's limits
start_container() {
    local what=$1
    shift
    "$ENGINE" run -d --name "$NAME" -p "127.0.0.1:$PORT:8000" \
        --read-only --tmpfs /tmp --cpus 2 --memory 1g \
        --cap-drop ALL --security-opt no-new-privileges \
        "$@" "$IMAGE" >/dev/null 2>"$WORK/run.log" || { cat "$WORK/run.log" >&2; fail "$what did not start"; }
}
start_container "the container"
# (podman without systemd logs errors about health-check timers here: harmless, kept out of sight)
STARTED=1

wait_ready() {
    local deadline=$(($(date +%s) + READY_TIMEOUT)) running
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/health/ready")" = 200 ]; do
        running=$("$ENGINE" inspect --format '{{.State.Running}}' "$NAME" 2>/dev/null || echo false)
        [ "$running" = true ] || fail "the container exited before it was ready"
        [ "$(date +%s)" -lt "$deadline" ] || fail "not ready after ${READY_TIMEOUT} s"
        sleep 0.2
    done
}
wait_ready
ready_s=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
say "ready ${ready_s} s after $ENGINE run"

# --- checks -----------------------------------------------------------------------------
uid=$("$ENGINE" exec "$NAME" id -u) || fail "cannot exec in the container"
[ "$uid" != 0 ] || fail "the service runs as root"
if [ "$ENGINE" = podman ]; then
    # podman schedules HEALTHCHECK timers only with systemd; run the check once by hand.
    podman healthcheck run "$NAME" >/dev/null || fail "the image's HEALTHCHECK fails on a ready service"
else
    [ -n "$(docker inspect --format '{{if .State.Health}}yes{{end}}' "$NAME")" ] || fail "the image has no HEALTHCHECK"
fi
say "runs as uid $uid, read-only root filesystem, health check passes"

code=$(curl -s -o "$WORK/predict.json" -w '%{http_code}' -F "image=@$SMEAR" "$URL/predict")
[ "$code" = 200 ] || fail "POST /predict answered $code: $(cat "$WORK/predict.json")"

python3 - "$SMEAR" "$WORK/infer-request.json" <<'PY'
import base64, json, sys
data = base64.b64encode(open(sys.argv[1], "rb").read()).decode("ascii")
body = {"id": "smoke", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [data]}]}
json.dump(body, open(sys.argv[2], "w"))
PY
code=$(curl -s -o "$WORK/infer.json" -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary "@$WORK/infer-request.json" "$URL/v2/models/dscnet/infer")
[ "$code" = 200 ] || fail "POST /v2/models/dscnet/infer answered $code: $(cat "$WORK/infer.json")"
curl -sf "$URL/v2/models/dscnet" >"$WORK/metadata.json" || fail "GET /v2/models/dscnet failed"
curl -sf "$URL/metrics" >"$WORK/metrics.txt" || fail "GET /metrics failed"

python3 - "$WORK" <<'PY' || fail "the answers are wrong (see above)"
import json, math, sys
from pathlib import Path

work = Path(sys.argv[1])
classes = ["benign", "early_pre_b", "pre_b", "pro_b"]
predict = json.loads((work / "predict.json").read_text())
infer = json.loads((work / "infer.json").read_text())
metadata = json.loads((work / "metadata.json").read_text())
metrics = (work / "metrics.txt").read_text()
problems = []

if predict.get("label") not in classes:
    problems.append(f"/predict label {predict.get('label')!r} is not one of {classes}")
probs = predict.get("probabilities", {})
if sorted(probs) != sorted(classes) or not math.isclose(sum(probs.values()), 1.0, abs_tol=1e-4):
    problems.append(f"/predict probabilities {probs} are not the 4 classes summing to 1")

order = metadata["outputs"][0].get("parameters", {}).get("classes")
if order != classes:
    problems.append(f"v2 metadata class order {order} != {classes}")
out = (infer.get("outputs") or [{}])[0]
if infer.get("id") != "smoke" or out.get("name") != "probabilities" or out.get("datatype") != "FP32" \
        or out.get("shape") != [1, 4] or len(out.get("data", [])) != 4:
    problems.append(f"v2 answer has the wrong form: {infer}")
elif not math.isclose(sum(out["data"]), 1.0, abs_tol=1e-4):
    problems.append(f"v2 probabilities {out['data']} do not sum to 1")
elif probs and any(abs(a - probs[c]) > 1e-5 for a, c in zip(out["data"], classes)):
    problems.append(f"v2 probabilities {out['data']} differ from /predict's {probs}")

for line in ("dscnet_ready 1.0", 'dscnet_requests_total{endpoint="/predict",status="200"} 1.0'):
    if line not in metrics:
        problems.append(f"/metrics lacks {line!r}")

for problem in problems:
    print("  " + problem, file=sys.stderr)
if problems:
    sys.exit(1)
print(f"smoke-test: /predict -> {predict['label']} {probs}; v2 infer -> {out['data']}")
PY

# --- stop: SIGTERM must end it cleanly ------------------------------------------------------
"$ENGINE" stop -t 30 "$NAME" >/dev/null 2>>"$WORK/run.log" || { cat "$WORK/run.log" >&2; fail "the container did not stop"; }
exit_code=$("$ENGINE" inspect --format '{{.State.ExitCode}}' "$NAME")
[ "$exit_code" = 0 ] || fail "the container exited with $exit_code on SIGTERM"
say "stopped cleanly"

# --- a model mounted from the host, as a lab swaps one in: DSCNET_MODEL_PATH must be obeyed ----------
"$ENGINE" rm -f "$NAME" >/dev/null 2>&1
NAME=$NAME-mounted
MOUNTED=$WORK/mounted-models
mkdir -p "$MOUNTED" && cp models/dscnet.onnx "$MOUNTED/dscnet.onnx"
# the same network under a card of its own version, so that the answer shows which files were loaded
python3 - models/dscnet.json "$MOUNTED/dscnet.json" <<'PY' || fail "could not write the mounted model's card"
import json, sys
card = json.load(open(sys.argv[1]))
card["version"] += "-mounted"
json.dump(card, open(sys.argv[2], "w"))
PY
chmod -R a+rX "$MOUNTED"
start_container "the container with a mounted model" -v "$MOUNTED:/srv/models:ro" \
    -e DSCNET_MODEL_PATH=/srv/models/dscnet.onnx
wait_ready
code=$(curl -s -o "$WORK/predict-mounted.json" -w '%{http_code}' -F "image=@$SMEAR" "$URL/predict")
[ "$code" = 200 ] || fail "POST /predict with a mounted model answered $code: $(cat "$WORK/predict-mounted.json")"
python3 - "$WORK/predict-mounted.json" "$MOUNTED/dscnet.json" <<'PY' || fail "the mounted model was not the one serving"
import json, sys
answer, card = (json.load(open(path)) for path in sys.argv[1:3])
if answer["model"]["version"] != card["version"] or answer.get("label") not in card["classes"]:
    sys.exit(f"  answer {answer} is not from the mounted model {card['version']}")
print(f"smoke-test: mounted model {card['version']} /predict -> {answer['label']}")
PY
"$ENGINE" stop -t 30 "$NAME" >/dev/null 2>>"$WORK/run.log" || fail "the container with a mounted model did not stop"
say "all checks passed"
