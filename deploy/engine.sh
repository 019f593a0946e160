#!/usr/bin/env bash
# The container engine for `make compose-test` (and for trying the deployment on a bare Debian machine):
#   deploy/engine.sh start    install Debian's docker.io and docker-compose when missing, start dockerd
#                             when no engine answers; prints the compose command to use
#   deploy/engine.sh stop     stop the dockerd that `start` started (an engine that was already running
#                             is left alone)
#   deploy/engine.sh status   exit 0 when an engine answers
# The daemon keeps its images in NOWCAST_DOCKER_DATA_ROOT (default /var/lib/docker), so a later run
# builds warm. Needs root, or sudo, for apt-get and dockerd, as .ci/run does for chromium.
set -euo pipefail

STATE=${NOWCAST_ENGINE_STATE:-/run/nowcast-engine}
DATA_ROOT=${NOWCAST_DOCKER_DATA_ROOT:-/var/lib/docker}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

answers() { docker info >/dev/null 2>&1; }

compose_command() {  # compose v2 (the docker CLI plugin) where there is one, else Debian's docker-compose v1
    if docker compose version >/dev/null 2>&1; then
        echo "docker compose"
    elif command -v docker-compose >/dev/null; then
        echo "docker-compose"
    else
        return 1
    fi
}

install() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    compose_command >/dev/null || missing+=(docker-compose)
    command -v debootstrap >/dev/null || missing+=(debootstrap)   # deploy/base-image.sh
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "engine: installing ${missing[*]} (Debian packages)" >&2
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start() {
    install
    if answers; then
        if [ -f "$STATE/started-here" ]; then
            echo "engine: running since an earlier deploy/engine.sh start; stop stops it" >&2
        else
            echo "engine: a Docker engine is already running; it is used and left running" >&2
        fi
    else
        $SUDO mkdir -p "$STATE"
        echo "engine: starting dockerd (data root $DATA_ROOT, log $STATE/dockerd.log)" >&2
        # setsid: the daemon outlives this script, and a Ctrl-C in the caller's terminal does not reach it
        $SUDO setsid dockerd --data-root "$DATA_ROOT" --pidfile "$STATE/dockerd.pid" \
            >"$STATE/dockerd.log" 2>&1 </dev/null &
        for _ in $(seq 1 60); do
            answers && break
            sleep 1
        done
        if ! answers; then
            echo "engine: dockerd did not answer within 60 s; the end of its log:" >&2
            tail -20 "$STATE/dockerd.log" >&2
            exit 1
        fi
        touch "$STATE/started-here"
    fi
    echo "engine: $(docker version --format 'server {{.Server.Version}}, client {{.Client.Version}}'), compose: $(compose_command)" >&2
    compose_command
}

stop() {
    if [ ! -f "$STATE/started-here" ]; then
        echo "engine: not started by deploy/engine.sh; left running" >&2
        return 0
    fi
    local pid
    pid=$(cat "$STATE/dockerd.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        echo "engine: stopping dockerd (pid $pid)" >&2
        $SUDO kill -TERM "$pid"
        for _ in $(seq 1 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "engine: dockerd (pid $pid) still running after 60 s" >&2
            exit 1
        fi
    fi
    $SUDO rm -f "$STATE/started-here"
    echo "engine: stopped" >&2
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) answers ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
