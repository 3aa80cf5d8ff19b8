#!/usr/bin/env bash
# Starts the lb and every node of a cluster file in the foreground; Ctrl-C (or any one exiting) stops all.
set -u
config=${1:-config/local.toml}
bindir=${2:-target/release}
pids=()
stop() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  wait 2>/dev/null
  echo "stopped"
}
trap stop INT TERM EXIT
names=$(grep -A1 '^\[\[nodes\]\]' "$config" | sed -n 's/^name *= *"\(.*\)"/\1/p')
for n in $names; do
  "$bindir/node" --config "$config" --name "$n" & pids+=($!)
done
"$bindir/lb" --config "$config" & pids+=($!)
listen=$(sed -n '/^\[lb\]/,/^\[/s/^listen *= *"\(.*\)"/\1/p' "$config")
admin=$(sed -n '/^\[lb\]/,/^\[/s/^admin *= *"\(.*\)"/\1/p' "$config")
sleep 1
cat <<MSG

  cluster up: lb http://$listen  (admin http://$admin/status, /metrics)
  try:  curl -si -c /tmp/jar -b /tmp/jar -X POST http://$listen/session/incr/visits
        curl -s  -c /tmp/jar -b /tmp/jar http://$listen/session
  Ctrl-C stops everything.

MSG
wait -n
