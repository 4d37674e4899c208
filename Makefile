# The README's two commands: `make demo` and `make test`. Both build the virtualenv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The loading script's other supported world: datasets 3.6 (script loading), layered over .venv's packages.
VENV_DATASETS3 := .venv-datasets3
DATA_TESTS := tests/test_kspon_dataset.py tests/test_data_order.py
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch==2.13.0 is a CPU wheel already on disk here; a bare `torch` would pull several GB of CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# Only datasets 3.6 and the versions it pins (dill, fsspec, multiprocess) live here; a .pth adds .venv's packages.
$(VENV_DATASETS3)/.installed: $(VENV)/.installed
	$(PYTHON) -m venv $(VENV_DATASETS3)
	$(VENV_DATASETS3)/bin/python -c 'import pathlib, sys, sysconfig; \
		lib = pathlib.Path(sysconfig.get_path("purelib")); base = pathlib.Path("$(VENV)").resolve() / lib.relative_to(sys.prefix); \
		(lib / "base-venv.pth").write_text(f"import site; site.addsitedir({str(base)!r})\n")'
	$(VENV_DATASETS3)/bin/pip install -q "datasets==3.6.0" "setuptools>=77"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python tools/offline_whisper.py --output_dir models/whisper-base
	$(BIN)/accelerate launch --config_file configs/cpu.yaml train_accelerate.py --config configs/demo.yaml

# Lint, the whole suite on the current stack (datasets 5.x), then the data tests again under datasets 3.6.
test: $(VENV)/.installed $(VENV_DATASETS3)/.installed lint
	$(BIN)/python -m pytest -q
	$(VENV_DATASETS3)/bin/python -m pytest -q $(DATA_TESTS)

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(VENV_DATASETS3) models runs .cache
