# edgefleet — every target sets itself up: `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PROTO_SRC := $(shell find protos -name '*.proto' | sort)
PROTO_STAMP := protos/.generated
MODELS_STAMP := models/.built

.PHONY: install protos models demo test test-fast lint bench stubs fleet-demo clean fuzz perf-analyzer

install: $(INSTALLED)

# torch comes from the local CPU wheel first; a loose requirement would pull a 5 GB CUDA build.
# --no-deps: both wheels require the GUI opencv-python, a second cv2 over our headless one (their
# other imports are in the extras). supervision 0.30.9 is the last with ByteTrack, the tracking
# benchmark's anchor.
$(INSTALLED): pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps rapidocr-onnxruntime==1.4.4
	$(PY) -m pip install -q --disable-pip-version-check --no-deps supervision==0.30.9
	touch $@

protos: $(PROTO_STAMP)

# Python stubs are generated with the installed grpcio-tools so gencode and runtime always match.
$(PROTO_STAMP): $(INSTALLED) $(PROTO_SRC)
	find protos -name '*_pb2*.py*' -delete
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_SRC)
	touch $@

models: $(MODELS_STAMP)

$(MODELS_STAMP): $(PROTO_STAMP) scripts/build_default_models.py edgefleet/export/mtcnn.py
	$(PY) scripts/build_default_models.py --repository models
	touch $@

demo: $(MODELS_STAMP)
	$(VENV)/bin/edgefleet demo --repository models

test: $(MODELS_STAMP) perf-analyzer
	$(PY) -m pytest -q

# The unit tests only: no child processes, external services or multi-second runs (marker
# `system`, pyproject.toml). `make test` runs everything.
test-fast: $(MODELS_STAMP)
	$(PY) -m pytest -q -m "not system"

# Triton's perf_analyzer (from the tritonclient 2.41.0 wheel) for the HTTP/gRPC parity test.
perf-analyzer: build/perf_analyzer/bin/perf_analyzer

build/perf_analyzer/bin/perf_analyzer: scripts/install_perf_analyzer.sh | $(INSTALLED)
	bash scripts/install_perf_analyzer.sh $(PY)

# Long fuzzing of the real server over gRPC (tests/server/test_fuzz.py) and HTTP
# (tests/server/test_http_fuzz.py), FUZZ_SECONDS each: FUZZ_SECONDS=3600 make fuzz.
FUZZ_SECONDS ?= 600
fuzz: $(MODELS_STAMP)
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(PY) -m pytest -q -s --timeout 0 \
		tests/server/test_fuzz.py tests/server/test_http_fuzz.py -k long

# Style, types, and the architecture: import-linter holds the layers in .importlinter.
lint: $(PROTO_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	PYTHONPATH=. $(VENV)/bin/lint-imports

bench: $(MODELS_STAMP)
	for script in bench/bench_*.py; do $(PY) -m bench.$$(basename $$script .py) || exit 1; done

stubs: $(PROTO_STAMP)
	bash scripts/gen_stubs.sh

fleet-demo: $(MODELS_STAMP)
	$(PY) -m edgefleet.fleet_demo --repository models

clean:
	rm -rf $(VENV) models build .mypy_cache .pytest_cache $(PROTO_STAMP)
	find protos -name '*_pb2*.py*' -delete
