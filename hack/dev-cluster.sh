#!/usr/bin/env bash
# `make dev-cluster` and `make dev-cluster-down`: starts hack/dev-cluster in
# the background and waits until its cluster is ready, or stops it and
# removes everything it made.
#
#   hack/dev-cluster.sh up BINARY DIR [NODES]
#   hack/dev-cluster.sh down BINARY DIR
set -euo pipefail

cmd=${1:?usage: $0 up|down BINARY DIR [NODES]}
bin=${2:?}
dir=${3:?}
pidfile=$dir/pid

# alive: the process exists and is not a zombie (nothing may reap it: its
# parent, make's shell, is gone).
alive() { [ -e "/proc/$1" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; }
running() { [ -f "$pidfile" ] && alive "$(cat "$pidfile")"; }

case "$cmd" in
up)
  if running; then
    echo "a dev cluster runs already (pid $(cat "$pidfile")): export KUBECONFIG=$dir/kubeconfig"
    exit 0
  fi
  mkdir -p "$dir"
  rm -f "$dir/ready"
  # Its own session: it outlives make, and its nodes die with it.
  setsid "$bin" -dir "$dir" -nodes "${4:-3}" -overlayd "$(pwd)/bin/overlayd" >"$dir/log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1200); do
    [ -f "$dir/ready" ] && break
    if ! running; then
      echo "the dev cluster did not come up:" >&2
      tail -n 40 "$dir/log" >&2
      exit 1
    fi
    sleep 0.1
  done
  if [ ! -f "$dir/ready" ]; then
    echo "the dev cluster is not ready after 2 minutes; see $dir/log" >&2
    exit 1
  fi
  cat <<MSG
dev cluster up (log: $dir/log)

  export KUBECONFIG=$dir/kubeconfig
  kubectl apply -f Documentation/kube-overlayd.yml     # or: helm install, see Documentation/kubernetes.md
  make dev-cluster-down                                # removes everything

kubeconfig ($dir/kubeconfig):
MSG
  cat "$dir/kubeconfig"
  ;;
down)
  if running; then
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    for _ in $(seq 600); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      echo "dev cluster (pid $pid) still running after 60 s; killing it" >&2
      kill -KILL "$pid"
    fi
  fi
  # Whatever a crashed dev cluster left.
  "$bin" -sweep
  rm -rf "$dir"
  echo "dev cluster removed"
  ;;
*)
  echo "usage: $0 up|down BINARY DIR [NODES]" >&2
  exit 2
  ;;
esac
