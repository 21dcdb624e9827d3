# Two entry points (see README): `make demo` runs the main job, `make test` runs every test.
# Both create the virtual environment they need in .venv (pip, not uv: pip honours this
# machine's torch cap and installs torch from its local wheel files).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN ?= runs/vgg16

.PHONY: setup demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/onnx-pipeline export --model vgg16 --weights random --output $(RUN) --force
	$(BIN)/onnx-pipeline verify $(RUN)

lint: setup
	$(BIN)/ruff check onnx_pipeline tests benchmarks
	$(BIN)/ruff format --check onnx_pipeline tests benchmarks
	$(BIN)/mypy onnx_pipeline

test: setup lint
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/pipeline.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
