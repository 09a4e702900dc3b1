#!/usr/bin/env bash
# A private Docker engine for checking the images on a machine where none runs (a VM or CI box
# with Debian's docker.io but no service): its own socket, data and state under DIR, no
# iptables and no bridge (builds and containers use --network host), overlay2 storage with a
# fallback to vfs where the kernel has no overlayfs. Needs root.
#   docker/engine.sh start [DIR]   prints DOCKER_HOST=unix://DIR/docker.sock
#   docker/engine.sh stop  [DIR]   stops that engine (only the one whose pid file is in DIR)
# DIR defaults to /tmp/telemetry-dockerd.
set -euo pipefail
cmd="${1:?usage: engine.sh start|stop [DIR]}"
dir="${2:-/tmp/telemetry-dockerd}"
sock="$dir/docker.sock"
pidfile="$dir/dockerd.pid"
answers() { DOCKER_HOST="unix://$sock" docker info >/dev/null 2>&1; }

case "$cmd" in
start)
  [ "$(id -u)" = 0 ] || { echo "engine.sh: dockerd needs root" >&2; exit 1; }
  command -v dockerd >/dev/null || { echo "engine.sh: no dockerd (apt-get install docker.io)" >&2; exit 1; }
  mkdir -p "$dir"
  if answers; then echo "DOCKER_HOST=unix://$sock"; exit 0; fi
  driver=overlay2
  grep -qw overlay /proc/filesystems || driver=vfs
  for attempt in "$driver" vfs; do
    # setsid: the engine outlives this script and is not in the caller's process group
    setsid dockerd --host "unix://$sock" --data-root "$dir/data-$attempt" --exec-root "$dir/exec" \
      --pidfile "$pidfile" --storage-driver="$attempt" --iptables=false --ip6tables=false --bridge=none \
      > "$dir/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 60); do
      answers && { echo "DOCKER_HOST=unix://$sock"; exit 0; }
      kill -0 $! 2>/dev/null || break
      sleep 0.5
    done
    echo "engine.sh: dockerd with $attempt storage did not answer:" >&2
    tail -5 "$dir/dockerd.log" >&2
    kill $! 2>/dev/null || true
    wait $! 2>/dev/null || true
    [ "$attempt" = vfs ] && exit 1
  done
  ;;
stop)
  [ -f "$pidfile" ] || { echo "engine.sh: no engine in $dir" >&2; exit 0; }
  pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 60); do
    if ! kill -0 "$pid" 2>/dev/null; then
      # dockerd leaves its default network namespace mounted, which keeps DIR from being removed
      for ns in "$dir"/exec/netns/*; do mountpoint -q "$ns" 2>/dev/null && umount "$ns"; done
      exit 0
    fi
    sleep 0.5
  done
  echo "engine.sh: dockerd $pid still running" >&2; exit 1
  ;;
*) echo "usage: engine.sh start|stop [DIR]" >&2; exit 2 ;;
esac
