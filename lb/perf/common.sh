# Shared by the scripts in lb/perf/: a private copy of config/local.toml on ports 28xxx/29xxx, its 3 nodes
# started, one session made. Sets: root, rel, out, dir, cookie, pids (killed on exit); proxy_cmd NAME sets
# port and cmd for `lb` or `minimal` (`bench minimal-proxy` with lb's node timeouts; BARE=1: without).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
rel=$root/target/release
out=$root/target/perf
mkdir -p "$out"
dir=$(mktemp -d /tmp/lbperf.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
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

proxy_cmd() {
    case $1 in
        lb) port=28080; export RUST_LOG="${RUST_LOG:-warn}"; cmd=("$rel/lb" --config "$dir/cluster.toml") ;;
        minimal) port=28082; cmd=("$rel/bench" minimal-proxy --listen 127.0.0.1:28082 --upstream 127.0.0.1:29001)
            [ -n "${BARE:-}" ] || cmd+=(--config "$dir/cluster.toml") ;;
        *) echo "unknown proxy $1" >&2; exit 1 ;;
    esac
}

# Waits until the proxy on $port answers for the session.
wait_proxy() {
    for _ in $(seq 300); do curl -sf -H "Cookie: $cookie" "http://127.0.0.1:$1/session" >/dev/null 2>&1 && return; sleep 0.2; done
    echo "no proxy on port $1" >&2; exit 1
}
