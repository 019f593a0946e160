#!/usr/bin/env bash
# `make compose-test`: the deployment of docker-compose.yml run for real, end to end, on this machine.
#   1. engine      install Debian's docker.io and docker-compose if missing, start dockerd if none answers
#   2. wheelhouse  deploy/wheelhouse.sh: the wheels both images install (on the host, no-op when current)
#   3. base image  deploy/base-image.sh: nowcast-base:bookworm from Debian packages (no registry here);
#                  NOWCAST_BASE_IMAGE=python:3.11-slim builds on the official image instead
#   4. build       the app image (Dockerfile) and the local S3 server's (deploy/s3/Dockerfile)
#   5. checks      tests/test_compose.py: up, the seven steps of the contract (README, Deploy), down -v,
#                  and the engine stopped when this script started it
# Any failure ends the run non-zero, naming the step. Times and image sizes go to the report
# (NOWCAST_COMPOSE_REPORT, default $TMPDIR/nowcast-compose-test.json) and are printed at the end.
# NOWCAST_COMPOSE_STORE=minio runs MinIO's images (docker-compose.yml alone) where they can be pulled.
set -uo pipefail
cd "$(dirname "$0")/.."

export NOWCAST_BASE_IMAGE=${NOWCAST_BASE_IMAGE:-nowcast-base:bookworm}
export NOWCAST_IMAGE=${NOWCAST_IMAGE:-nowcast:latest}
export NOWCAST_S3_IMAGE=${NOWCAST_S3_IMAGE:-nowcast-s3:latest}
export NOWCAST_COMPOSE_REPORT=${NOWCAST_COMPOSE_REPORT:-${TMPDIR:-/tmp}/nowcast-compose-test.json}
export NOWCAST_ENGINE_STATE=${NOWCAST_ENGINE_STATE:-/run/nowcast-engine}
export DOCKER_CLI_HINTS=false
PY=${PY:-.venv/bin/python}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"   # debootstrap and chroot (deploy/base-image.sh)
step=""
engine_started=0
rm -f "$NOWCAST_COMPOSE_REPORT"

report() {  # key value (a number or a JSON string)
    "$PY" - "$NOWCAST_COMPOSE_REPORT" "$1" "$2" <<'EOF'
import json, pathlib, sys
path, key, value = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
data = json.loads(path.read_text()) if path.is_file() else {}
try:
    data[key] = json.loads(value)
except ValueError:
    data[key] = value
path.write_text(json.dumps(data, indent=2))
EOF
}

finish() {
    local code=$?
    if [ "$engine_started" = 1 ] && deploy/engine.sh status; then
        # a run that failed before step 7 of the checks: nothing of it is left running
        [ -n "${compose:-}" ] && $compose -p nowcast-compose-test -f docker-compose.yml -f docker-compose.local.yml \
            -f deploy/compose-test/docker-compose.test.yml down -v --remove-orphans >/dev/null 2>&1
        deploy/engine.sh stop
    fi
    if [ "$code" -ne 0 ]; then
        echo "compose-test: FAILED at step: $step" >&2
    fi
    exit "$code"
}
trap finish EXIT

begin() {
    step=$1
    echo "== compose-test: $step"
    started=$(date +%s.%N)
}
took() { awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}'; }

begin "engine (install if missing, start if not running)"
compose=$(deploy/engine.sh start) || exit 1
[ -f "$NOWCAST_ENGINE_STATE/started-here" ] && engine_started=1
report engine_start_s "$(took)"

begin "wheelhouse (deploy/wheelhouse.sh)"
deploy/wheelhouse.sh || exit 1
report wheelhouse_s "$(took)"

if [ "$NOWCAST_BASE_IMAGE" = "nowcast-base:bookworm" ]; then
    begin "base image (deploy/base-image.sh)"
    $SUDO deploy/base-image.sh || exit 1
    report base_image_s "$(took)"
fi

build() {  # name dockerfile image
    local kind=warm
    docker image inspect "$3" >/dev/null 2>&1 || kind=cold
    begin "build $1 image ($3, $kind)"
    docker build --quiet --file "$2" --build-arg "BASE_IMAGE=$NOWCAST_BASE_IMAGE" --tag "$3" . >/dev/null || exit 1
    report "build_${1}_s" "$(took)"
    report "build_${1}_kind" "\"$kind\""
    report "image_${1}_mb" "$(docker image inspect -f '{{.Size}}' "$3" | awk '{printf "%.0f", $1 / 1e6}')"
}
build app Dockerfile "$NOWCAST_IMAGE"
[ "${NOWCAST_COMPOSE_STORE:-local}" = "minio" ] || build s3 deploy/s3/Dockerfile "$NOWCAST_S3_IMAGE"
report image_base_mb "$(docker image inspect -f '{{.Size}}' "$NOWCAST_BASE_IMAGE" 2>/dev/null | awk '{printf "%.0f", $1 / 1e6}')"

begin "checks (tests/test_compose.py: steps 1-7)"
log=$(mktemp)
NOWCAST_COMPOSE_TEST=1 NOWCAST_COMPOSE_CMD="$compose" NOWCAST_ENGINE_STARTED_HERE=$engine_started \
    "$PY" -m pytest -v -p no:cacheprovider -n 0 tests/test_compose.py 2>&1 | tee "$log"
code=${PIPESTATUS[0]}
report checks_s "$(took)"
if [ "$code" -ne 0 ]; then
    failed=$(grep -oE "^FAILED tests/test_compose.py::test_step[0-9]+_[a-z0-9_]+" "$log" | sed 's/.*::test_//' | paste -sd, -)
    step="checks: ${failed:-pytest exited $code}"
    rm -f "$log"
    exit 1
fi
rm -f "$log"
step="done"
engine_started=0   # step 7 stopped it
echo "== compose-test: passed; report $NOWCAST_COMPOSE_REPORT"
cat "$NOWCAST_COMPOSE_REPORT"
