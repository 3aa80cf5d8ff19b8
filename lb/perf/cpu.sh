#!/usr/bin/env bash
# CPU (user + system, from /proc) per pinned `GET /session` of lb and of the minimal Pingora proxy, both in
# front of the same node with the same cookie, in alternating rounds so that a drift in the shared machine's load
# falls on both alike. Complements callgrind.sh (which counts only user-space instructions).
#
#   lb/perf/cpu.sh [ROUNDS=5] [DURATION=5s] [CONNECTIONS=64]
#
# Needs release builds of node, lb and bench, and wrk. Prints each round and the median ratio.
rounds=${1:-5}
duration=${2:-5s}
conns=${3:-64}
. "$(dirname "$0")/common.sh"
declare -A pid
for p in lb minimal; do
    proxy_cmd $p
    "${cmd[@]}" >"$dir/$p.log" 2>&1 &
    pid[$p]=$!
    pids+=($!)
    wait_proxy $port
done
ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
hz=$(getconf CLK_TCK)
ratios=()
for r in $(seq "$rounds"); do
    order=(lb minimal)
    [ $((r % 2)) -eq 0 ] && order=(minimal lb)
    declare -A per
    for p in "${order[@]}"; do
        proxy_cmd $p
        url=http://127.0.0.1:$port/session
        wrk -t1 -c"$conns" -d1s -H "Cookie: $cookie" "$url" >/dev/null
        t0=$(ticks ${pid[$p]})
        n=$(wrk -t1 -c"$conns" -d"$duration" -H "Cookie: $cookie" "$url" | sed -n 's/^ *\([0-9]*\) requests in.*/\1/p')
        t1=$(ticks ${pid[$p]})
        per[$p]=$(awk -v n="$n" -v t=$((t1 - t0)) -v hz="$hz" 'BEGIN { printf "%.0f", n / (t / hz) }')
        echo "round $r $p: $n requests, $((t1 - t0)) ticks, ${per[$p]} requests per CPU-second"
    done
    ratios+=($(awk -v a="${per[lb]}" -v b="${per[minimal]}" 'BEGIN { printf "%.3f", a / b }'))
done
echo "lb / minimal requests per CPU-second, by round: ${ratios[*]}"
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "median %.3f\n", m }'
