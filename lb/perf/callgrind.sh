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
which=${1:?lb|minimal}
duration=${2:-10s}
conns=${3:-8}
. "$(dirname "$0")/common.sh"
proxy_cmd "$which"
valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "${cmd[@]}" >"$dir/proxy.log" 2>&1 &
vg=$!
pids+=($vg)
url=http://127.0.0.1:$port/session
wait_proxy $port
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
