#!/usr/bin/env bash
# `make run-sidecar`: the example shop behind the cluster of CONFIG (default config/sidecar.toml). Starts one app
# per `upstream` in the file, waits until each answers /healthz, then runs lb + nodes in the foreground
# (`bench up`). Ctrl-C stops everything: bench stops the cluster, the trap below stops the apps by pid.
set -euo pipefail
cd "$(dirname "$0")/../../.."
config=${1:-config/sidecar.toml}
python=/usr/bin/python3 # Debian's, which has Flask (python3-flask); a pyenv python on PATH may not

pids=()
stop_apps() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_apps EXIT
trap 'exit 130' INT TERM

# Every `upstream = "http://HOST:PORT"` line of the file is an app to start.
mapfile -t apps < <(sed -n 's|^upstream *= *"http://\([^"]*\)".*|\1|p' "$config")
[ ${#apps[@]} -gt 0 ] || { echo "no upstream in $config" >&2; exit 1; }
for addr in "${apps[@]}"; do
  "$python" node/examples/cart/app.py --host "${addr%:*}" --port "${addr##*:}" &
  pids+=($!)
done

# Waits for every app's /healthz (up to 10 s each); fails if one does not come up.
"$python" - "${apps[@]}" <<'PY'
import sys, time, urllib.request
for addr in sys.argv[1:]:
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(f"http://{addr}/healthz", timeout=1).read()
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"the app at {addr} did not answer /healthz within 10 s")
            time.sleep(0.1)
PY

lb=$(sed -n 's|^listen *= *"\([^"]*\)".*|\1|p' "$config" | head -n 1)
echo "Shop: http://$lb/"
target/release/bench up --config "$config"
