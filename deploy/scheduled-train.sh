#!/bin/sh
# The trainer service: train on the archive on a schedule, verify, promote by the rule.
#   every NOWCAST_TRAIN_EVERY_S (86400): nowcast train --promote into the registry; the API follows
#   its production pointer. After a failed run (e.g. no archive yet) it tries again after
#   NOWCAST_TRAIN_RETRY_S (600).
# Each scheduled run trains in its own folder, runs/<UTC start time>/, named in runs/current-run until
# the run ends: a run cut short (the container restarted) resumes from its last checkpoint; the next
# scheduled run starts afresh (resuming last night's finished run would train nothing new).
# Exit codes of nowcast train: 0 promoted, 3 production kept, 75 another run holds the lock, 2 error.
set -u

: "${NOWCAST_STORE:?NOWCAST_STORE (the archive) is not set}"
: "${NOWCAST_REGISTRY:?NOWCAST_REGISTRY (the model store folder) is not set}"
: "${NOWCAST_PRODUCT:?NOWCAST_PRODUCT (the product to train on) is not set}"
model=${NOWCAST_MODEL:-convlstm}
schedule=${NOWCAST_TRAIN_CONFIG:-/app/deploy/train-nightly.yaml}
rule=${NOWCAST_PROMOTION_RULE:-/app/configs/promotion.yaml}
every=${NOWCAST_TRAIN_EVERY_S:-86400}
retry=${NOWCAST_TRAIN_RETRY_S:-600}
runs=${NOWCAST_RUNS:-/app/runs}

child=""
stop() {
    [ -n "$child" ] && kill -TERM "$child" 2>/dev/null && wait "$child"
    exit 143
}
trap stop TERM INT

pause() {  # sleep, but wake for SIGTERM (docker compose stop/down)
    sleep "$1" &
    child=$!
    wait "$child"
    child=""
}

while true; do
    if [ -s "$runs/current-run" ]; then
        run=$(cat "$runs/current-run")
    else
        run=$(date -u +%Y%m%dT%H%M%SZ)
        echo "$run" >"$runs/current-run"
    fi
    mkdir -p "$runs/$run"
    echo "{\"event\": \"train-start\", \"at\": \"$(date -u +%FT%TZ)\", \"run\": \"$run\", \"model\": \"$model\", \"product\": \"$NOWCAST_PRODUCT\"}"
    # the window holds out the archive's most recent hours for verification (configs/promotion.yaml)
    set -- --config "/app/configs/$model.yaml" --config "$schedule" \
        --data.store "$NOWCAST_STORE" --data.products "[$NOWCAST_PRODUCT]" \
        --registry "$NOWCAST_REGISTRY" --promote --rule "$rule"
    [ -n "${NOWCAST_PROMOTION_WINDOW_HOURS:-}" ] && set -- "$@" --window-hours "$NOWCAST_PROMOTION_WINDOW_HOURS"
    # relative paths in the model's config (runs/<model>/...) land in this run's folder
    (cd "$runs/$run" && exec nowcast train "$@") &
    child=$!
    wait "$child"
    code=$?
    child=""
    echo "{\"event\": \"train-end\", \"at\": \"$(date -u +%FT%TZ)\", \"run\": \"$run\", \"exit\": $code}"
    case $code in
        0|3) rm -f "$runs/current-run"; pause "$every" ;;   # done: promoted, or production kept
        *) pause "$retry" ;;                                # locked or failed: the same run again later
    esac
done
