#!/usr/bin/env bash
# Build the Dockerfile's three targets and check them for real, alone (make test runs the same
# file): what the server image holds (pip list), the unprivileged user, the server's
# HEALTHCHECK turning healthy against PostgreSQL, the MQTT subscriber storing a message from a
# real Mosquitto, and the edge poller reading a simulated Modbus device and forwarding through
# the server image. tests/test_container_images.py starts a private engine where none answers
# (docker/engine.sh) and makes a local base where python:3.11-slim cannot be pulled
# (docker/local-base.sh). TELEMETRY_DOCKERD_DIR=DIR keeps the engine's data (base and layers)
# between runs: 2.5 minutes from nothing on 2 cores, about 35 s after.
#   docker/check-images.sh [pytest args]
# Like `make test`, set TEST_DATABASE_URL to a PostgreSQL to use (else the embedded one).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
exec nice -n 19 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_container_images.py "$@"
