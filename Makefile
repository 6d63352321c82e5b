# roomchat — the commands. `make help` lists them.
CARGO ?= cargo
ARGS ?=

.PHONY: help run cluster build test cluster-test check fmt e2e socketio bench fuzz soak ci clean

help: ## this list
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

run: ## start the server on http://localhost:3000 (extra flags: make run ARGS="--history 100")
	$(CARGO) run --release --bin roomchat -- $(ARGS)

cluster: ## a local redis-server and two nodes sharing it, http://localhost:3000 and :3002 (needs redis-server)
	scripts/cluster.sh $(ARGS)

build: ## debug build of the server (what the browser and Socket.IO tests drive)
	$(CARGO) build -p roomchat

test: ## unit and integration tests over real loopback sockets (about a minute; the cluster's: make cluster-test)
	$(CARGO) test --workspace

cluster-test: ## the cluster tests, the Redis faults and a 30 s chaos run, and the protocol suites on 1 and 2 nodes, ~2 min: each test starts its own redis-server (skipped, with a message, without one)
	$(CARGO) test --test cluster --test cluster_suites --test cluster_faults

check: ## formatting and lints, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --test cluster --test cluster_suites --test cluster_faults -- -D warnings # test = false keeps them out of --all-targets
	$(CARGO) check --manifest-path fuzz/Cargo.toml --bins # the fuzz targets use the library's hidden API

fmt: ## format the code
	$(CARGO) fmt --all

e2e: build ## browser tests in headless Chromium, plus the Socket.IO client tests (Node)
	cd tests/node && ROOMCHAT_BIN=$(CURDIR)/target/debug/roomchat ./run-e2e.sh

socketio: build ## only the Socket.IO tests: the official client over WebSocket and long-polling (with tokens too), and a Socket.IO page in Chromium
	cd tests/node && ROOMCHAT_BIN=$(CURDIR)/target/debug/roomchat ./run-e2e.sh socketio.test.mjs polling.test.mjs sio-page.test.mjs identity.test.mjs

bench: ## roomchat and its two peers, every case in one run, tables into docs/BENCHMARKS.md (~15 min; RUNS= CASES= PEERS= PIN=)
	bench/scripts/run-all.sh

fuzz: ## bounded fuzzing of frame decoding and the room registry
	scripts/fuzz.sh

soak: ## random clients for a few minutes; checks seq, threads and memory after
	scripts/soak.sh

ci: check test cluster-test e2e fuzz soak ## what .ci/run runs (with shorter fuzz and soak) after installing what the tests need

clean:
	$(CARGO) clean
