#!/usr/bin/env bash
# Instructions per pinned `GET /session` through a proxy, counted by callgrind (deterministic, unlike seconds on
# a shared machine). Starts 3 nodes of a private copy of config/local.toml on ports 28xxx/29xxx, makes one session,
# then runs PROXY under callgrind: warm-up, counters zeroed, wrk for DURATION, counters dumped.
#
#   lb/perf/callgrind.sh lb|minimal [DURATION=10s] [CONNECTIONS=8]
#
# VARY=1: every request's Cookie header is new (a counter cookie after the routing cookie), as after every
# write, so lb's route cache never hits.
# lb: target/release/lb (RUST_LOG as given, default warn like `bench compare`); minimal: `bench minimal-proxy`
# (Pingora forwarding to one node with lb's allocator, knobs and node timeouts; BARE=1: Pingora's defaults,
# no timeouts). Needs release builds of node, lb and bench. Output: target/perf/<proxy>[-$TAG].callgrind and
# .requests, and a summary line. lb/perf/cgdiff.py A B shows where A spends more per request than B.
set -euo pipefail
which=${1:?lb|minimal}
duration=${2:-10s}
conns=${3:-8}
root=$(cd "$(dirname "$0")/../.." && pwd)
rel=$root/target/release
out=$root/target/perf
mkdir -p "$out"
dir=$(mktemp -d /tmp/lbperf.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

sed -e 's/127.0.0.1:8080/127.0.0.1:28080/; s/127.0.0.1:8081/127.0.0.1:28081/' \
    -e 's/127.0.0.1:900\([0-9]\)/127.0.0.1:2900\1/; s/127.0.0.1:910\([0-9]\)/127.0.0.1:2910\1/' \
    "$root/config/local.toml" >"$dir/cluster.toml"
for port in 28080 28081 28082 29001 29002 29003 29101 29102 29103; do
    if ss -ltn "sport = :$port" | grep -q LISTEN; then echo "port $port is busy" >&2; exit 1; fi
done
for n in n1 n2 n3; do
    RUST_LOG=warn "$rel/node" --config "$dir/cluster.toml" --name $n >"$dir/$n.log" 2>&1 &
    pids+=($!)
done
for _ in $(seq 100); do curl -sf http://127.0.0.1:29001/_node/health >/dev/null && break; sleep 0.1; done
cookie=$(curl -si -X POST http://127.0.0.1:29001/session/incr/a | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\).*/\1/p')
[ -n "$cookie" ] || { echo "no cookie" >&2; exit 1; }

case $which in
    lb) port=28080; export RUST_LOG="${RUST_LOG:-warn}"; cmd=("$rel/lb" --config "$dir/cluster.toml") ;;
    minimal) port=28082; cmd=("$rel/bench" minimal-proxy --listen 127.0.0.1:28082 --upstream 127.0.0.1:29001)
        [ -n "${BARE:-}" ] || cmd+=(--config "$dir/cluster.toml") ;;
    *) echo "unknown proxy $which" >&2; exit 1 ;;
esac
valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "${cmd[@]}" >"$dir/proxy.log" 2>&1 &
vg=$!
pids+=($vg)
url=http://127.0.0.1:$port/session
for _ in $(seq 300); do curl -sf -H "Cookie: $cookie" "$url" >/dev/null 2>&1 && break; sleep 0.2; done
served=$(curl -si -H "Cookie: $cookie" "$url" | tr -d '\r' | sed -n 's/^[Xx]-[Ss]erved-[Bb]y: //p')
load=(-H "Cookie: $cookie")
if [ -n "${VARY:-}" ]; then
    cat >"$dir/vary.lua" <<LUA
n = 0
request = function()
    n = n + 1
    return wrk.format("GET", nil, { ["Cookie"] = "$cookie; v=" .. n })
end
LUA
    load=(-s "$dir/vary.lua")
fi
wrk -t1 -c"$conns" -d3s "${load[@]}" "$url" >/dev/null
callgrind_control -z $vg >/dev/null 2>&1
wrk -t1 -c"$conns" -d"$duration" "${load[@]}" "$url" >"$dir/wrk.txt"
callgrind_control -d $vg >/dev/null 2>&1
requests=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$dir/wrk.txt")
errors=$(grep -E "Non-2xx|Socket errors" "$dir/wrk.txt" || true)
dump=$(ls -t "$dir"/cg.out.* | head -1)
cp "$dump" "$out/$which${TAG:+-$TAG}.callgrind"
echo "$requests" >"$out/$which${TAG:+-$TAG}.requests"
ir=$(callgrind_annotate "$dump" 2>/dev/null | sed -n 's/^\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
echo "$which: served by ${served:-?}, $requests requests, $ir instructions, $((ir / requests)) per request ${errors:+($errors)}"
