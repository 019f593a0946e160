#!/usr/bin/env bash
# A local base image for where no image registry can be reached (python:3.11-slim cannot be pulled):
# Debian bookworm from Debian's own packages (debootstrap --variant=minbase), with Debian's python3
# (3.11), python3-venv and ca-certificates, security updates applied, docs and man pages left out as
# in the slim images; imported into the engine as nowcast-base:bookworm.
#   deploy/base-image.sh                    (skips the work when the image is already there)
#   REBUILD=1 deploy/base-image.sh          (start over, e.g. for newer security updates)
# Both Dockerfiles then build on it: --build-arg BASE_IMAGE=nowcast-base:bookworm, or
# NOWCAST_BASE_IMAGE=nowcast-base:bookworm for docker compose. Needs root (debootstrap, chroot).
set -euo pipefail

IMAGE=${NOWCAST_BASE_IMAGE:-nowcast-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

if [ -z "${REBUILD:-}" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base image: $IMAGE is there"
    exit 0
fi
if ! command -v debootstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

root=$(mktemp -d /var/tmp/nowcast-base.XXXXXX)
cleanup() {
    umount "$root/proc" 2>/dev/null || true
    rm -rf "$root"
}
trap cleanup EXIT

echo "base image: debootstrap --variant=minbase bookworm from $MIRROR"
debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$root.log" 2>&1 || {
    tail -20 "$root.log" >&2
    exit 1
}
rm -f "$root.log"

# what debian:bookworm-slim (and so python:3.11-slim) leaves out
cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
EOF
cp /etc/resolv.conf "$root/etc/resolv.conf"
mount -t proc proc "$root/proc"
in_root() { chroot "$root" env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }
in_root apt-get update -qq
in_root apt-get upgrade -y -qq >/dev/null
in_root apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates passwd >/dev/null
in_root apt-get clean
umount "$root/proc"

rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/* "$root"/tmp/* \
    "$root"/var/cache/debconf/*-old "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
: >"$root/etc/resolv.conf"   # the engine provides its own
python_version=$(chroot "$root" python3 -c 'import sys; print(".".join(map(str, sys.version_info[:3])))')

tar -C "$root" --numeric-owner -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase bookworm + python3 $python_version" \
    - "$IMAGE" >/dev/null
echo "base image: $IMAGE (Debian bookworm, Python $python_version, $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
