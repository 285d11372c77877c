# Candela: `make run` starts the whole mesh locally; `make test` runs every test. Both install what is missing.
SHELL := /bin/bash
export PATH := $(HOME)/.local/bin:$(PATH)


.PHONY: install run test checks console-checks tier-unit tier-integration tier-e2e test-no-extensions fuzz lint typecheck protos check-protos test-unit test-integration test-e2e \
	test-console format bench bench-proxy bench-ingest bench-query bench-auth bench-gateway bench-console \
	bench-export bench-providers bench-cluster

install:
	@./scripts/install.sh

run: install
	uv run python -m candela_stack run

# The static checks and the three tiers run side by side, each printed whole when it ends: the checks and
# the unit tests are CPU-bound, the integration and e2e tests mostly wait on their stores and stacks (each
# pytest session on ports of its own). The e2e tier is the longest, so the unit tier, done early, then runs
# E2E_LATE, some of the e2e modules, in a session (and stack) of its own.
E2E_LATE := tests/e2e/test_rest_any_input.py tests/e2e/test_faults_under_load.py

# check-protos goes first, alone: it regenerates the API package and the console's client in place.
test: install check-protos
	$(MAKE) --no-print-directory -j4 --output-sync=target checks tier-unit tier-integration tier-e2e

# One job slot, its steps in turn: as prerequisites they would take the slots the tiers start in.
checks:
	$(MAKE) --no-print-directory -j1 lint typecheck console-checks

tier-unit:
	uv run pytest tests/unit -q
	$(MAKE) --no-print-directory test-no-extensions
	uv run pytest $(E2E_LATE) -q

tier-integration:
	uv run pytest tests/integration -q

tier-e2e:
	uv run pytest tests/e2e -q $(addprefix --ignore=,$(E2E_LATE))

# A bounded campaign (FUZZ_SECONDS=, default 300 s): atheris compares the C wire decoder with its pure-Python
# twin from the seed corpus (new inputs go to a temporary directory, not the repo), then the decoder built with
# AddressSanitizer and UBSan takes random and mutated inputs (ASAN_SECONDS=, default 120 s). About 7 minutes.
fuzz: install
	corpus=$$(mktemp -d) && uv run python -m tests.fuzz.logwire_fuzz -max_total_time=$${FUZZ_SECONDS:-300} \
		"$$corpus" tests/fuzz/corpus; status=$$?; rm -rf "$$corpus"; exit $$status
	uv run python -m tests.fuzz.asan --seconds $${ASAN_SECONDS:-120}

test-no-extensions:  ## the wire and encoding unit tests again on the pure-Python path (~40 s)
	CANDELA_NO_EXTENSIONS=1 uv run pytest tests/unit -q -m wire

test-unit: install
	uv run pytest tests -q -m unit

test-integration: install
	uv run pytest tests -q -m integration

test-e2e: install
	uv run pytest tests -q -m e2e

test-console: install  ## the console's type check and component tests (its browser tests are in tests/e2e)
	$(MAKE) --no-print-directory console-checks

console-checks:
	cd console && npx tsc --noEmit && npx vitest run --silent

lint:
	uv run ruff check .
	uv run ruff format --check .

typecheck:
	uv run mypy runtime/src schema/src services/*/src infra/src cli/src tests $(wildcard bench/*/*.py)

protos: install
	./scripts/gen_protos.sh

check-protos:
	./scripts/check_protos.sh

format:
	uv run ruff format .
	uv run ruff check --fix .

# Benchmarks: each runs its baseline side by side and writes a report to bench/results/.
bench: bench-proxy bench-providers bench-gateway bench-ingest bench-query bench-export bench-auth bench-console

bench-proxy: install  ## direct vs Candela vs LiteLLM against a static nginx upstream
	uv run python bench/proxy/bench_proxy.py

bench-providers: install  ## Gemini and Bedrock streams vs direct; the OpenAI path vs the proxy before them
	uv run python bench/proxy/bench_providers.py

bench-gateway: install  ## the proxy benchmark straight to the proxy vs through Envoy, side by side
	uv run python bench/gateway/bench_gateway.py

bench-ingest: install  ## ingest RPC -> rows visible in ClickHouse (BENCH_ARGS= to change)
	uv run python bench/ingest/bench_ingest.py $(BENCH_ARGS)

bench-query: install  ## 10M requests in ClickHouse 18.16, p50/p99 of the query API (ROWS=, RUNS= to change)
	uv run python bench/query/run.py --rows $${ROWS:-10000000} --runs $${RUNS:-100}

bench-cluster: install  ## one ClickHouse server vs the local 2x2 cluster in one run: ingest logs/s, query p50/p99 on 10M rows
	uv run python bench/ingest/bench_ingest.py --logs 100000 --runs 3 --rate 2000 --seconds 5 --compare
	uv run python bench/query/run.py --rows $${ROWS:-10000000} --runs $${RUNS:-50} --rounds 3 --compare

bench-export: install  ## ExportRequests of 200k rows vs a 20k baseline: rows/s and the query process's peak RSS
	uv run python bench/query/bench_export.py

bench-console: install  ## the console in Chromium on the query benchmark's 10M requests (ROWS= to change)
	uv run python bench/console/bench_console.py --rows $${ROWS:-10000000}

bench-auth: install  ## Authenticate on the proxy's hot path, cached and uncached
	uv run python bench/auth/bench_authenticate.py
