#!/usr/bin/env bash
# Extra Docker engines side by side with the main one, for scale-out runs and tests.
#
#   scripts/engines.sh start N     start engines 1..N (one already running is left as it is)
#                                  and load the sandbox image into each from the main engine
#   scripts/engines.sh restart I   start engine I again after `kill` (its containers are then
#                                  cleaned up by the engine itself: they were auto-remove)
#   scripts/engines.sh kill I      SIGKILL engine I's dockerd and containerd: an engine dying
#                                  mid-run (fault injection)
#   scripts/engines.sh stop [I..]  stop the engines this script started (all when none given)
#   scripts/engines.sh status      one line per engine: I, state, DOCKER_HOST
#   scripts/engines.sh host I      print engine I's DOCKER_HOST
#   scripts/engines.sh tls-host I  print engine I's TLS address (see GYMBOX_ENGINE_TLS_PORT)
#
# Engine I lives in $GYMBOX_ENGINES_DIR/I (default /work/engines/gymbox): its own --data-root,
# --exec-root, --pidfile and unix socket, no bridge and no iptables, so it never touches the
# main engine's state or the host's network. Only processes whose pid is in one of these pid
# files, and whose command line names that engine's directory, are ever signalled.
# GYMBOX_IMAGES lists the images to copy in (default: every gymbox-sandbox tag on the main
# engine). With GYMBOX_ENGINE_TLS_PORT=P, engine I also listens on tcp://127.0.0.1:P+I with
# TLS client verification; a test CA and certificates are made in $GYMBOX_ENGINES_DIR/I/tls
# (ca.pem, cert.pem and key.pem are the client's), and `tls-host I` prints that address.
set -euo pipefail

ROOT="${GYMBOX_ENGINES_DIR:-/work/engines/gymbox}"
MAIN_HOST="${GYMBOX_MAIN_DOCKER_HOST:-unix:///var/run/docker.sock}"
START_TIMEOUT_S="${GYMBOX_ENGINE_START_TIMEOUT_S:-60}"

say() { printf 'engines.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

dir_of() { printf '%s/%s' "$ROOT" "$1"; }
host_of() { printf 'unix://%s/docker.sock' "$(dir_of "$1")"; }

# The pid in $1 if that process runs and its command line mentions $2; else nothing.
pid_if_ours() {
  local pidfile=$1 marker=$2 pid
  [[ -r $pidfile ]] || return 0
  pid=$(cat "$pidfile" 2>/dev/null || true)
  [[ $pid =~ ^[0-9]+$ ]] || return 0
  [[ -r /proc/$pid/cmdline ]] || return 0
  if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$marker"; then
    printf '%s' "$pid"
  fi
}

dockerd_pid() { pid_if_ours "$(dir_of "$1")/dockerd.pid" "$(dir_of "$1")"; }
containerd_pid() {
  pid_if_ours "$(dir_of "$1")/exec/containerd/containerd.pid" "$(dir_of "$1")/exec"
}

tls_host_of() { printf 'tcp://127.0.0.1:%s' "$((GYMBOX_ENGINE_TLS_PORT + $1))"; }

# A throw-away CA, a server certificate for 127.0.0.1 and a client certificate (test only).
make_certs() {
  local d=$1
  [[ -s $d/key.pem ]] && return 0
  mkdir -p "$d"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=gymbox-test-ca \
      -keyout ca-key.pem -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
      -keyout server-key.pem -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
      -extfile server.ext -out server-cert.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=gymbox-client \
      -keyout key.pem -out client.csr 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
      -extfile client.ext -out cert.pem 2>/dev/null
    chmod 0600 ./*key.pem
  )
}

answers() { docker -H "$(host_of "$1")" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

start_one() {
  local i=$1 dir
  dir=$(dir_of "$i")
  if [[ -n $(dockerd_pid "$i") ]] && answers "$i"; then
    say "engine $i already runs at $(host_of "$i")"
    return 0
  fi
  mkdir -p "$dir/data" "$dir/exec"
  # A socket or pid file left by a killed engine would make dockerd refuse to start.
  [[ -n $(dockerd_pid "$i") ]] || rm -f "$dir/docker.sock" "$dir/dockerd.pid"
  # A killed containerd may linger as a zombie (its pid answers `kill -0`): dockerd would wait
  # for it instead of starting its own.
  [[ -n $(containerd_pid "$i") ]] || rm -f "$dir/exec/containerd/containerd.pid"
  local tls=()
  if [[ -n ${GYMBOX_ENGINE_TLS_PORT:-} ]]; then
    make_certs "$dir/tls"
    tls=(--tlsverify --tlscacert "$dir/tls/ca.pem" --tlscert "$dir/tls/server-cert.pem"
         --tlskey "$dir/tls/server-key.pem" -H "$(tls_host_of "$i")")
  fi
  say "starting engine $i at $(host_of "$i") ${tls:+and $(tls_host_of "$i") (TLS) }(log: $dir/dockerd.log)"
  setsid dockerd \
    --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" \
    -H "$(host_of "$i")" "${tls[@]}" \
    --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
    >>"$dir/dockerd.log" 2>&1 </dev/null &
  local waited=0
  until answers "$i"; do
    sleep 0.5
    waited=$((waited + 1))
    if ((waited > START_TIMEOUT_S * 2)); then
      tail -n 20 "$dir/dockerd.log" >&2 || true
      die "engine $i did not answer within ${START_TIMEOUT_S}s"
    fi
  done
}

load_images() {
  local i=$1 images
  images=${GYMBOX_IMAGES:-$(docker -H "$MAIN_HOST" images --format '{{.Repository}}:{{.Tag}}' \
    | grep '^gymbox-sandbox:' || true)}
  [[ -n $images ]] || die "no gymbox-sandbox image on the main engine: run \`gymbox image build\`"
  local missing=()
  for image in $images; do
    docker -H "$(host_of "$i")" image inspect "$image" >/dev/null 2>&1 || missing+=("$image")
  done
  ((${#missing[@]} == 0)) && return 0
  say "loading ${missing[*]} into engine $i"
  # shellcheck disable=SC2086
  docker -H "$MAIN_HOST" save "${missing[@]}" | docker -H "$(host_of "$i")" load >/dev/null
}

signal_engine() {
  local i=$1 sig=$2 pid
  for pid in $(dockerd_pid "$i") $(containerd_pid "$i"); do
    kill "-$sig" "$pid" 2>/dev/null || true
  done
}

wait_gone() {
  local i=$1 tries=0
  while [[ -n $(dockerd_pid "$i")$(containerd_pid "$i") ]]; do
    sleep 0.5
    tries=$((tries + 1))
    if ((tries == 40)); then
      say "engine $i did not stop on SIGTERM within 20s: SIGKILL"
      signal_engine "$i" KILL
    fi
    ((tries < 60)) || die "engine $i did not stop"
  done
}

stop_one() {
  local i=$1
  [[ -d $(dir_of "$i") ]] || return 0
  if [[ -z $(dockerd_pid "$i")$(containerd_pid "$i") ]]; then
    reap_orphans "$i"  # a killed engine's shims outlive it
    return 0
  fi
  say "stopping engine $i"
  # dockerd stops its containers and its own containerd on SIGTERM.
  local pid
  pid=$(dockerd_pid "$i")
  if [[ -n $pid ]]; then kill -TERM "$pid" 2>/dev/null || true; else signal_engine "$i" TERM; fi
  wait_gone "$i"
  reap_orphans "$i"
  rm -f "$(dir_of "$i")/docker.sock"
}

# After a `kill`, shims of the dead containerd can outlive every restart (their containerd is
# gone), holding their containers' mounts: end the ones whose containerd address is this
# engine's, and unmount what this engine's directories still have mounted.
reap_orphans() {
  local i=$1 exec_dir pid
  exec_dir="$(dir_of "$i")/exec/"
  for pid in $(pgrep -f containerd-shim || true); do
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-address $exec_dir"; then
      say "engine $i: ending orphaned shim $pid"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  awk -v d="$(dir_of "$i")/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r |
    while read -r mount; do umount -l "$mount" 2>/dev/null || true; done
}

engines() { # the engine numbers that have a directory
  [[ -d $ROOT ]] || return 0
  find "$ROOT" -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9]+' -printf '%f\n' | sort -n
}

check_index() { [[ ${1:-} =~ ^[1-9][0-9]*$ ]] || die "expected an engine number >= 1, got '${1:-}'"; }

cmd=${1:-}
shift || true
case $cmd in
  start)
    check_index "${1:-}"
    for ((i = 1; i <= $1; i++)); do start_one "$i"; load_images "$i"; done
    ;;
  restart)
    check_index "${1:-}"; start_one "$1"
    ;;
  kill)
    check_index "${1:-}"
    [[ -n $(dockerd_pid "$1") ]] || die "engine $1 does not run"
    say "killing engine $1 (SIGKILL)"
    signal_engine "$1" KILL
    # Until they are reaped, a `restart` would find containerd "still running" and wait on it.
    wait_gone "$1"
    ;;
  stop)
    if (($# == 0)); then set -- $(engines); fi
    for i in "$@"; do check_index "$i"; stop_one "$i"; done
    ;;
  status)
    for i in $(engines); do
      state=stopped
      if [[ -n $(dockerd_pid "$i") ]]; then answers "$i" && state=running || state=unresponsive; fi
      printf '%s %s %s\n' "$i" "$state" "$(host_of "$i")"
    done
    ;;
  host)
    check_index "${1:-}"; host_of "$1"; echo
    ;;
  tls-host)
    check_index "${1:-}"
    [[ -n ${GYMBOX_ENGINE_TLS_PORT:-} ]] || die "set GYMBOX_ENGINE_TLS_PORT"
    tls_host_of "$1"; echo
    ;;
  *)
    sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
