# syntax=docker/dockerfile:1
# Two images from one file (docs/scaling.md, README "Production"):
#   docker build --target server -t telemetry-server .   the API (gunicorn) and its stream process
#   docker build --target edge   -t telemetry-edge .     the Modbus poller on a gateway
#   docker build --target mqtt   -t telemetry-mqtt .     the MQTT subscriber (python -m backend.mqtt)
# The server image holds only what the server runs: requirements.txt (no pymodbus, no embedded
# PostgreSQL - requirements-embedded.txt is for `make run` - and no test tools), so it needs
# DATABASE_URL (your PostgreSQL, or Supabase's connection string) and says so if it is missing.

# The base image is an argument so that a machine without Docker Hub can build on a local
# Python 3.11 image (docker/local-base.sh makes one from Debian bookworm):
#   docker build --build-arg BASE_IMAGE=local/python:3.11-bookworm --target server .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# Everything runs as this unprivileged user; /app/data (spool, edge queue) is its only writable path.
RUN groupadd --system --gid 10001 telemetry \
 && useradd --system --uid 10001 --gid telemetry --home-dir /app --no-create-home --shell /usr/sbin/nologin telemetry \
 && mkdir -p /app/data && chown telemetry:telemetry /app/data

FROM base AS server
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY gunicorn.conf.py .
COPY migrations/ migrations/
COPY backend/ backend/
# The edge program is not the server's: its code stays out of this image.
RUN rm -rf backend/modbus
ENV HOST=0.0.0.0 PORT=5000 DATA_DIR=/app/data STREAM_HOST=0.0.0.0 STREAM_PORT=5001
USER telemetry
# The spool must survive a container restart: a volume (docs/reliability.md).
VOLUME ["/app/data"]
EXPOSE 5000 5001
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '5000'), timeout=4)"]
CMD ["python", "-m", "backend", "serve"]

FROM server AS mqtt
# The MQTT subscriber writes through the server's ingest pipeline, so it is the server image
# with another command (and no HTTP port of its own).
HEALTHCHECK NONE
CMD ["python", "-m", "backend.mqtt"]

FROM base AS edge
COPY backend/modbus/requirements.txt backend/modbus/requirements.txt
RUN pip install -r backend/modbus/requirements.txt
# `backend/__init__.py` imports nothing at import time, so the edge program needs only its own
# package (no Flask, no database driver).
COPY backend/__init__.py backend/__init__.py
COPY backend/modbus/ backend/modbus/
# docker/modbus.example.toml keeps its store-and-forward queue here.
RUN mkdir -p /var/lib/fluxio && chown telemetry:telemetry /var/lib/fluxio
USER telemetry
VOLUME ["/var/lib/fluxio"]
# Mount the gateway's config (docker/modbus.example.toml shows every setting) here.
CMD ["python", "-m", "backend.modbus", "run", "--config", "/etc/telemetry/modbus.toml"]
