#!/usr/bin/env bash
# Serve CAM Explorer with N Streamlit replicas behind HAProxy (session affinity by cookie).
#
#   deploy/serve.sh N          e.g. deploy/serve.sh 4, then open http://127.0.0.1:8501
#
# Starts N `streamlit run app.py` replicas (headless, on REPLICA_HOST, ports PORT+1..PORT+N), waits
# until each answers /_stcore/health, then HAProxy on HOST:PORT in front of them (deploy/haproxy.cfg),
# and waits until the balancer answers too. Ctrl-C or SIGTERM stops all of them; so does HAProxy
# exiting, or the last replica. A replica that dies is reported; HAProxy's health check takes it out
# and its users reconnect to another replica (with a fresh session there). (Started with `&` from a
# script, a shell ignores SIGINT for it: stop it with SIGTERM then.)
#
# Settings (environment):
#   PORT=8501            the balancer's port
#   HOST=127.0.0.1       the balancer's address (0.0.0.0: every interface, e.g. a lecture-hall network)
#   REPLICA_HOST=127.0.0.1  the replicas' address (a private address when a balancer on another
#                        machine talks to them directly)
#   REPLICA_PORTS="8502 8503"  the replicas' ports (default PORT+1 .. PORT+N)
#   BACKENDS="10.0.0.2:8501 10.0.0.3:8501"  more servers behind this balancer: other machines
#                        running this script (N may then be 0)
#   COOKIE=CAM_REPLICA   the affinity cookie's name (use another one on a front balancer: BACKENDS)
#   THREADS              torch threads per replica (default: CPU cores / N, at least 1)
#   LOG_DIR              replica and HAProxy logs, the rendered HAProxy config (default: a new temp folder)
#   HAPROXY_CFG          the HAProxy configuration to render (default deploy/haproxy.cfg)
#   PYTHON=python3  HAPROXY=haproxy  STARTUP_TIMEOUT=180 (seconds)
#
# Each replica gets CAM_EXPLORER_REPLICA=rK in its environment (named in its log), and all share
# one cookie secret (STREAMLIT_SERVER_COOKIE_SECRET, generated unless set).
set -euo pipefail

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
}

N=${1:-}
[[ "$N" =~ ^[0-9]+$ ]] || usage
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PORT=${PORT:-8501}
HOST=${HOST:-127.0.0.1}
REPLICA_HOST=${REPLICA_HOST:-127.0.0.1}
BACKENDS=${BACKENDS:-}
COOKIE=${COOKIE:-CAM_REPLICA}
PYTHON=${PYTHON:-python3}
HAPROXY=${HAPROXY:-haproxy}
HAPROXY_CFG=${HAPROXY_CFG:-$HERE/haproxy.cfg}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-180}
if [ -z "${REPLICA_PORTS:-}" ]; then
    REPLICA_PORTS=""
    for ((k = 1; k <= N; k++)); do REPLICA_PORTS+="$((PORT + k)) "; done
fi
read -r -a PORTS <<<"$REPLICA_PORTS"
read -r -a REMOTE <<<"$BACKENDS"
if [ "${#PORTS[@]}" -ne "$N" ]; then
    echo "serve.sh: REPLICA_PORTS names ${#PORTS[@]} ports for $N replicas" >&2
    exit 2
fi
if [ "$N" -eq 0 ] && [ "${#REMOTE[@]}" -eq 0 ]; then
    echo "serve.sh: nothing to serve: N is 0 and BACKENDS is empty" >&2
    exit 2
fi
command -v "$HAPROXY" >/dev/null 2>&1 || {
    echo "serve.sh: no HAProxy ('$HAPROXY'); on Debian/Ubuntu: apt-get install haproxy" >&2
    exit 2
}
CORES=$(nproc 2>/dev/null || echo 1)
THREADS=${THREADS:-$((N > 0 && CORES / N > 1 ? CORES / N : 1))}
LOG_DIR=${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/cam-explorer-serve.XXXXXX")}
mkdir -p "$LOG_DIR"
# One secret for all replicas, so that anything Streamlit signs (e.g. login cookies) stays valid
# when a user is moved to another replica. Passed in the environment, not on the command line (ps).
if [ -z "${STREAMLIT_SERVER_COOKIE_SECRET:-}" ]; then
    STREAMLIT_SERVER_COOKIE_SECRET=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
fi
export STREAMLIT_SERVER_COOKIE_SECRET

PIDS=()
stop_all() {
    trap - EXIT INT TERM
    if [ "${#PIDS[@]}" -gt 0 ]; then
        echo "serve.sh: stopping ${#PIDS[@]} processes" >&2
        kill -TERM "${PIDS[@]}" 2>/dev/null || true
        for _ in $(seq 50); do
            alive=0
            for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
            [ "$alive" -eq 0 ] && break
            sleep 0.2
        done
        kill -KILL "${PIDS[@]}" 2>/dev/null || true
        wait 2>/dev/null || true
    fi
    echo "serve.sh: stopped (logs in $LOG_DIR)" >&2
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

healthy() {  # healthy URL: true when URL answers 200
    "$PYTHON" - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

wait_healthy() {  # wait_healthy URL PID WHAT
    local deadline=$((SECONDS + STARTUP_TIMEOUT))
    until healthy "$1"; do
        if ! kill -0 "$2" 2>/dev/null; then
            echo "serve.sh: $3 exited while starting" >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "serve.sh: $3 not healthy after ${STARTUP_TIMEOUT}s" >&2
            return 1
        fi
        sleep 0.5
    done
}

local_url() {  # a URL this machine can reach for a bind address
    case "$1" in 0.0.0.0 | "::" | "[::]" | "*") echo "127.0.0.1" ;; *) echo "$1" ;; esac
}

cd "$ROOT"
SERVERS=""
declare -A REPLICA_PID=()
for ((k = 1; k <= N; k++)); do
    name="r$k"
    port=${PORTS[$((k - 1))]}
    log="$LOG_DIR/$name.log"
    CAM_EXPLORER_REPLICA=$name OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS MPLBACKEND=Agg \
        "$PYTHON" -m streamlit run app.py \
        --server.headless true --server.address "$REPLICA_HOST" --server.port "$port" \
        --server.fileWatcherType none --browser.gatherUsageStats false \
        >"$log" 2>&1 </dev/null &
    pid=$!
    PIDS+=("$pid")
    REPLICA_PID[$name]=$pid
    echo "serve.sh: replica $name pid $pid on $REPLICA_HOST:$port, log $log"
    SERVERS+="    server $name $REPLICA_HOST:$port check cookie $name"$'\n'
done
for ((k = 1; k <= ${#REMOTE[@]}; k++)); do
    SERVERS+="    server m$k ${REMOTE[$((k - 1))]} check cookie m$k"$'\n'
    echo "serve.sh: backend m$k ${REMOTE[$((k - 1))]}"
done
for ((k = 1; k <= N; k++)); do
    wait_healthy "http://$(local_url "$REPLICA_HOST"):${PORTS[$((k - 1))]}/_stcore/health" "${REPLICA_PID[r$k]}" \
        "replica r$k (log $LOG_DIR/r$k.log)"
done

CFG="$LOG_DIR/haproxy.cfg"
{ cat "$HAPROXY_CFG"; printf '%s' "$SERVERS"; } >"$CFG"
export CAM_BIND_HOST=$HOST CAM_PORT=$PORT CAM_COOKIE=$COOKIE
"$HAPROXY" -c -q -f "$CFG" || { echo "serve.sh: HAProxy rejects $CFG" >&2; exit 1; }
"$HAPROXY" -db -f "$CFG" >"$LOG_DIR/haproxy.log" 2>&1 </dev/null &
HAPROXY_PID=$!
PIDS+=("$HAPROXY_PID")
echo "serve.sh: haproxy pid $HAPROXY_PID on $HOST:$PORT, config $CFG, log $LOG_DIR/haproxy.log"
URL="http://$(local_url "$HOST"):$PORT"
wait_healthy "$URL/_stcore/health" "$HAPROXY_PID" "haproxy"
echo "serve.sh: ready: $URL ($N local replicas with $THREADS torch threads each${BACKENDS:+; backends $BACKENDS})"

declare -A REPORTED=()
while kill -0 "$HAPROXY_PID" 2>/dev/null; do
    wait -n || true  # returns when a child exits, or at once when a trapped signal arrives
    for name in "${!REPLICA_PID[@]}"; do
        if [ -z "${REPORTED[$name]:-}" ] && ! kill -0 "${REPLICA_PID[$name]}" 2>/dev/null; then
            REPORTED[$name]=1
            echo "serve.sh: replica $name (pid ${REPLICA_PID[$name]}) exited; see $LOG_DIR/$name.log" >&2
        fi
    done
    if [ "$N" -gt 0 ] && [ "${#REPORTED[@]}" -eq "$N" ] && [ "${#REMOTE[@]}" -eq 0 ]; then
        echo "serve.sh: no replica left" >&2
        exit 1
    fi
done
echo "serve.sh: haproxy exited; see $LOG_DIR/haproxy.log" >&2
exit 1
