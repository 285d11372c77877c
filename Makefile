# Candela: `make run` starts the whole mesh locally; `make test` runs every test. Both install what is missing.
SHELL := /bin/bash
export PATH := $(HOME)/.local/bin:$(PATH)


.PHONY: install run test lint typecheck protos check-protos test-unit test-integration test-e2e bench format

install:
	@./scripts/install.sh

run: install
	uv run python -m candela_stack run

test: install lint typecheck check-protos
	uv run pytest tests -q

test-unit: install
	uv run pytest tests -q -m unit

test-integration: install
	uv run pytest tests -q -m integration

test-e2e: install
	uv run pytest tests -q -m e2e

lint:
	uv run ruff check .
	uv run ruff format --check .

typecheck:
	uv run mypy runtime/src services/*/src infra/src tests $(wildcard bench/*/*.py)

protos: install
	./scripts/gen_protos.sh

check-protos:
	./scripts/check_protos.sh

format:
	uv run ruff format .
	uv run ruff check --fix .
