#!/usr/bin/env bash
# A local stand-in for python:3.11-slim, for machines that reach Debian's mirror and PyPI but
# not Docker Hub: Debian bookworm (minbase) with its python3 (3.11) in a venv at /opt/python,
# so `python` and `pip` are on PATH as in the official image. Imported into the engine that
# `docker` talks to (DOCKER_HOST), then:
#   docker build --build-arg BASE_IMAGE=local/python:3.11-bookworm --target server .
# Needs root and debootstrap (installed with apt-get when missing).
#   docker/local-base.sh [TAG]         default TAG: local/python:3.11-bookworm
# MIRROR overrides the Debian mirror. The host's extra CA certificates
# (/usr/local/share/ca-certificates) are trusted inside too, so pip in a build goes through
# the same TLS-inspecting proxy as the host's pip where there is one.
set -euo pipefail
TAG="${1:-local/python:3.11-bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
[ "$(id -u)" = 0 ] || { echo "local-base.sh: debootstrap needs root" >&2; exit 1; }
if ! command -v debootstrap >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
work="$(mktemp -d /tmp/telemetry-base.XXXXXX)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
echo "local-base.sh: debootstrap bookworm into $root (about 2 minutes)" >&2
nice -n 19 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$MIRROR" > "$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
chroot "$root" python3 -m venv /opt/python
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >/dev/null 2>&1
fi
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$TAG" >/dev/null
docker run --rm "$TAG" python -c 'import sys; print("local-base.sh: '"$TAG"': Python", sys.version.split()[0])'
