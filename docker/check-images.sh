#!/usr/bin/env bash
# Build the Dockerfile's three targets and check them for real (tests/test_container_images.py):
# what the server image holds (pip list), the unprivileged user, the server's HEALTHCHECK turning
# healthy against PostgreSQL, the MQTT subscriber storing a message from a real Mosquitto, and the
# edge poller reading a simulated Modbus device and forwarding through the server image.
# Not part of `make test` (it needs root, dockerd and debootstrap, and starts an engine). Measured
# here (2 cores): 2.5 minutes from nothing (1.5 of them for the local base), 35 s once the base
# and the layers are in the engine's data directory.
#   docker/check-images.sh [pytest args]
# Uses the engine at DOCKER_HOST (or the default socket) if one answers, otherwise starts a
# private one (docker/engine.sh, root and Debian's docker.io needed) and stops it at the end.
# BASE_IMAGE (default python:3.11-slim) must be present or pullable; where it is neither,
# docker/local-base.sh makes local/python:3.11-bookworm from Debian's mirror and that is used.
# Like `make test`, set TEST_DATABASE_URL to a PostgreSQL to use (else the embedded one).
set -euo pipefail
cd "$(dirname "$0")/.."
started=""
if ! docker info >/dev/null 2>&1; then
  dir="${TELEMETRY_DOCKERD_DIR:-/tmp/telemetry-dockerd}"
  host="$(bash docker/engine.sh start "$dir")"
  export "$host"
  started="$dir"
fi
trap '[ -z "$started" ] || bash docker/engine.sh stop "$started"' EXIT
BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim}"
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && ! docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "check-images.sh: $BASE_IMAGE cannot be pulled here; using a local Debian bookworm base" >&2
  BASE_IMAGE=local/python:3.11-bookworm
  docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || bash docker/local-base.sh "$BASE_IMAGE"
fi
export BASE_IMAGE TELEMETRY_IMAGE_TESTS=1
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
nice -n 19 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_container_images.py "$@"
