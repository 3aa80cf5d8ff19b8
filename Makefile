# The two set-up commands are `make run` and `make test`; both build what they need.
CARGO ?= cargo
SETUP := .ci/setup

.PHONY: run run-sidecar run-redis test bench rolling bench-node bench-lb bench-edge bench-sidecar soak check fmt setup

setup:
	@bash $(SETUP)

# Starts the local cluster (lb + 3 nodes from config/local.toml) in the foreground; Ctrl-C stops all of it.
run: setup
	$(CARGO) build --release --bins
	target/release/bench up --config config/local.toml

# The example shop (node/examples/cart, Flask) behind lb + 3 nodes in sidecar mode from config/sidecar.toml:
# one app per node, then the cluster in the foreground; the shop is at http://127.0.0.1:8180/. Ctrl-C stops all.
run-sidecar: setup
	$(CARGO) build --release --bins
	bash node/examples/cart/run.sh config/sidecar.toml

# Two web nodes and a standby with Redis as the session bank (config/redis.toml); starts redis-server on the
# file's address unless one answers there. Ctrl-C stops all of it.
run-redis: setup
	$(CARGO) build --release --bins
	target/release/bench up --config config/redis.toml

# Every test: unit tests and the integration tests that start the real binaries.
test: setup
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace -- --test-threads=2

# About 30 s of synthetic traffic against the local cluster with the busiest node killed mid-way.
bench: setup
	$(CARGO) build --release --bins
	mkdir -p target/bench
	target/release/bench cluster --config config/local.toml --sessions 1000 --concurrency 64 --duration 30s \
		--fault kill:primary@15s --json target/bench/report.json --plot target/bench/timeline.svg

# A rolling restart of the local cluster under load: from 5 s on, each node in turn is drained (drain = true in
# config/local.toml, reloaded), stopped, started again and waited for; the file is put back as it was.
rolling: setup
	$(CARGO) build --release --bins
	mkdir -p target/bench
	target/release/bench cluster --config config/local.toml --sessions 1000 --concurrency 64 --duration 40s \
		--fault rolling@5s --json target/bench/rolling.json --plot target/bench/rolling.svg

# One node's increments/s unreplicated, pair, bank (rss nodes, Redis), broadcast groups of 2, 3 and 5, sync and
# async, with the cores each process used; resident memory per 100 000 sessions of ~1 KB.
bench-node: setup
	$(CARGO) build --release --bins
	mkdir -p target/bench
	target/release/bench node --config config/local.toml --concurrency 64 --sessions 1000 --duration 10s \
		--json target/bench/node.json

# Pinned `GET /session` directly to a node, through lb, through a minimal Pingora proxy with lb's node timeouts
# and through HAProxy (when installed): req/s, p99 and requests per proxy CPU-second, as ratios of one run.
bench-lb: setup
	$(CARGO) build --release --bins
	mkdir -p target/bench
	target/release/bench compare --config config/local.toml --sessions 1000 --concurrency 64 --duration 10s \
		--mix get=1 --json target/bench/compare.json

# The edge against HAProxy (when installed), in one run of about a minute and a half: Layer-4 connections/s and
# bytes/s (HAProxy `mode tcp`, `balance source`), full TLS handshakes/s and pinned HTTPS GETs (same certificate),
# each per second and per proxy CPU-second, as ratios lb / HAProxy, median of 5 rounds.
bench-edge: setup
	$(CARGO) build --release --bins
	mkdir -p target/bench
	target/release/bench edge --config config/local.toml --rounds 5 --duration 2s --concurrency 32 --streams 4 \
		--json target/bench/edge.json

# The cart example app alone (its own sessions) against lb + sidecar nodes in sync mode in front of it, same
# workload in one invocation: req/s, p50/p99 and CPU per request of apps, nodes and lb, as ratios.
# ORDER=sidecar-first measures the sidecar configuration first.
bench-sidecar: setup
	$(CARGO) build --release --bins
	mkdir -p target/bench
	target/release/bench shop --config config/local.toml --apps 2 --concurrency 32 --duration 10s \
		--order $(or $(ORDER),alone-first) --json target/bench/shop.json

# Long fault-injection runs; not part of `make test`. Kills, a pause, a rolling restart of every node (which
# starts any node still dead), then n2 drained and stopped, and started again.
soak: setup
	$(CARGO) build --release --bins
	mkdir -p target/bench
	target/release/bench cluster --config config/local.toml --sessions 5000 --concurrency 128 --duration 600s \
		--fault kill:primary@60s --fault restart:n1@120s --fault stop:primary@240s+5s --fault rolling@300s \
		--fault drain:n2@450s --fault restart:n2@500s --json target/bench/soak.json

check:
	$(CARGO) run --release --bin lb -- check config/local.toml

fmt:
	$(CARGO) fmt --all
