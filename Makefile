# Censored Planet pipeline. `make run` processes generated sample scans locally;
# `make test` runs the test suite. Both create the environment with uv first.
SHELL := /bin/bash
PYTHON ?= python3
UV = $(shell PYTHON=$(PYTHON) scripts/ensure-uv.sh)
VAR ?= var
SAMPLE_SIZE ?= 200

.PHONY: env run test lint typecheck docs bench clean images k8s-base

# --compile-bytecode: every process (each launcher run, each Beam worker) then loads Beam, gRPC
# and pyarrow from .pyc files instead of compiling them, even where PYTHONDONTWRITEBYTECODE is
# set: measured 2.8 -> 1.4 s to import the launcher (services/beam_launcher/README.md). The
# project's own modules are not in the venv, so compileall compiles them (1.21 -> 1.05 CPU-s to
# import the launcher's modules; a stale .pyc is never used, Python checks the source's mtime).
env:
	$(UV) sync --frozen --quiet --compile-bytecode
	$(UV) run python -m compileall -q services sampledata > /dev/null
	$(UV) run python -m services.beam_launcher.native.build

run: env
	$(UV) run python -m sampledata --out $(VAR)/sample --size $(SAMPLE_SIZE)
	$(UV) run python -m services.mirror archives --source $(VAR)/sample/archives --dest $(VAR)/raw
	$(UV) run python -m services.mirror resources --url resources/sample --dest $(VAR)/resources
	$(UV) run python -m services.untar --raw $(VAR)/raw --target $(VAR)/bucket
	$(UV) run python -m services.routeviews sync --base-url $(VAR)/sample/caida \
		--dest $(VAR)/ip-metadata --snapshot-days 36500
	$(UV) run python -m services.beam_launcher --input $(VAR)/bucket/scans --require-markers \
		--resources $(VAR)/resources/current --warehouse $(VAR)/warehouse \
		--ip-metadata $(VAR)/ip-metadata
	$(UV) run python -m services.queries --warehouse $(VAR)/warehouse
	$(UV) run python -m services.beam_launcher.report --warehouse $(VAR)/warehouse \
		--html $(VAR)/report.html

test: env
	$(UV) run pytest -q

lint: env
	$(UV) run ruff check services sampledata tests bench deploy
	$(UV) run ruff format --check services sampledata tests bench deploy

typecheck: env
	$(UV) run mypy services sampledata

docs: env
	$(UV) run python -m services.beam_launcher.warehouse.schemas --docs docs/tables.md --bigquery-dir docs/bigquery

bench: env
	$(UV) run python bench/bench_parse.py
	$(UV) run python bench/bench_pipeline.py
	$(UV) run python bench/bench_e2e.py --keep $(VAR)/bench-e2e --ip-metadata-prefixes 1000000 --repeat 3
	$(UV) run python bench/bench_enrichment.py --keep $(VAR)/bench-e2e
	$(UV) run python bench/bench_export.py
	$(UV) run python bench/bench_ipmeta.py
	$(UV) run python bench/bench_msgspec.py

images:
	docker/build-images.sh $(TAG)

k8s-base: env
	$(UV) run python tests/test_helm.py --write

clean:
	rm -rf $(VAR)
