# Two entry points (see README): `make demo` runs the main job, `make test` runs every test.
# Both create the virtual environment they need in .venv (pip, not uv: pip honours this
# machine's torch cap and installs torch from its local wheel files).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN ?= runs/vgg16

.PHONY: setup demo test lint bench clean quark-venv browser

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/.installed

# AMD Quark (the reference for the AMD quantizers) in its own environment: amd-quark pins onnx <= 1.22,
# needs onnxruntime and torch (its first import compiles custom ops with g++ and ninja).
QUARK_VENV ?= .venv-quark
$(QUARK_VENV)/.installed:
	$(PYTHON) -m venv $(QUARK_VENV)
	$(QUARK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(QUARK_VENV)/bin/python -m pip install --quiet amd-quark==0.13 onnxruntime torch
	$(QUARK_VENV)/bin/python -c "import quark.onnx"
	touch $@

quark-venv: $(QUARK_VENV)/.installed

TARGETS ?= --target cpu-x86_64 --target cuda --target vitis-ai-kv260

demo: setup
	$(BIN)/python scripts/sample_photos.py runs/photos
	$(BIN)/onnx-pipeline export --model vgg16 --weights random --output $(RUN) --force \
		--images runs/photos --calibration-images runs/photos $(TARGETS)
	$(BIN)/onnx-pipeline verify $(RUN)
	$(BIN)/onnx-pipeline verify $(RUN)/bundles/cpu-x86_64
	$(BIN)/onnx-pipeline predict $(RUN)/bundles/cpu-x86_64 runs/photos/chelsea.jpg runs/photos/coffee.jpg --top-k 3
	$(BIN)/onnx-pipeline bench $(RUN)/bundles/cpu-x86_64 --batch-sizes 1 --seconds 2 --json > $(RUN)/bench-cpu.json
	$(BIN)/onnx-pipeline report $(RUN)/bundles/cpu-x86_64 --bench $(RUN)/bench-cpu.json

lint: setup
	$(BIN)/ruff check onnx_pipeline tests benchmarks scripts
	$(BIN)/ruff format --check onnx_pipeline tests benchmarks scripts
	$(BIN)/mypy onnx_pipeline

# Chromium (Debian's package) for the test that renders report.html in a real browser; where it
# cannot be installed (no apt, not root) that test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
		echo "chromium not installed: the browser test of report.html will be skipped"

test: setup lint browser
	$(MAKE) quark-venv || echo "AMD Quark could not be installed: its agreement test is skipped"
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/pipeline.py
	$(BIN)/python benchmarks/int8_quantize.py
	$(BIN)/python benchmarks/vitis_quantize.py
	$(BIN)/python benchmarks/degenerate_models.py
	$(BIN)/python benchmarks/quark_agreement.py
	$(BIN)/python benchmarks/noise_floor.py
	$(BIN)/python benchmarks/bundle_speed.py
	$(BIN)/python benchmarks/large_model.py
	$(BIN)/python benchmarks/serve.py
	$(BIN)/python benchmarks/sensitivity.py

clean:
	rm -rf $(VENV) $(QUARK_VENV) runs .pytest_cache .mypy_cache .ruff_cache
