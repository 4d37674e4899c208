# The README's two commands: `make demo` and `make test`. Both build the virtualenv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch==2.13.0 is a CPU wheel already on disk here; a bare `torch` would pull several GB of CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m kspon_whisper.convert_ct2 --output_dir models/whisper-base
	$(BIN)/accelerate launch --config_file configs/cpu.yaml train_accelerate.py --config configs/demo.yaml

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) models runs .cache
