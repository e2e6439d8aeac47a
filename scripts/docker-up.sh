#!/usr/bin/env bash
# Bring up a Docker engine for gymbox, or find the one that is already running.
#
# On a Debian machine, as root, it installs docker.io when dockerd is missing and starts dockerd
# with no bridge and no iptables rules: gymbox sandboxes run with network mode "none", and no
# traffic may leave this machine. A second run finds the engine up and does nothing; so does a
# run on a machine whose Docker is already running (Docker Desktop, a systemd unit, DOCKER_HOST).
#
# Prints "started" on stdout when this run started the engine (its pid is in $GYMBOX_DOCKERD_PID,
# default /run/gymbox-dockerd.pid) and "already-up" when it found one, so callers can stop only
# what they started: `kill "$(cat /run/gymbox-dockerd.pid)"`.
set -euo pipefail

pidfile=${GYMBOX_DOCKERD_PID:-/run/gymbox-dockerd.pid}
logfile=${GYMBOX_DOCKERD_LOG:-/var/log/gymbox-dockerd.log}
wait_s=${GYMBOX_DOCKERD_WAIT:-90}

engine_answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if ! command -v docker >/dev/null 2>&1 || ! command -v dockerd >/dev/null 2>&1; then
  if engine_answers; then echo already-up; exit 0; fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "docker-up: no Docker engine here and this is not Debian as root; install Docker" \
         "(https://docs.docker.com/engine/install/) and start it, then run again" >&2
    exit 1
  fi
  echo "docker-up: installing docker.io from Debian" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi

if engine_answers; then echo already-up; exit 0; fi
if [ -n "${DOCKER_HOST:-}" ]; then
  echo "docker-up: DOCKER_HOST=$DOCKER_HOST does not answer; start that engine or unset DOCKER_HOST" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "docker-up: the engine is down and starting dockerd needs root; run: sudo $0" >&2
  exit 1
fi

# No bridge, no NAT, no iptables: containers get loopback only, whatever they ask for.
nohup dockerd --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
  >"$logfile" 2>&1 </dev/null &
echo $! >"$pidfile"

for _ in $(seq "$wait_s"); do
  if engine_answers; then echo started; exit 0; fi
  if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "docker-up: dockerd exited; its log is $logfile:" >&2
    tail -n 20 "$logfile" >&2
    exit 1
  fi
  sleep 1
done
echo "docker-up: dockerd did not answer within ${wait_s}s; see $logfile" >&2
exit 1
