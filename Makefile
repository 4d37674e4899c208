# The README's two commands: `make demo` and `make test`. Both build the virtualenv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The loading script's other supported world: datasets 3.6 (script loading), layered over .venv's packages.
VENV_DATASETS3 := .venv-datasets3
DATA_TESTS := tests/test_kspon_dataset.py tests/test_data_order.py tests/test_dataset_decoding.py
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-fast lint clean ffmpeg

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch==2.13.0 is a CPU wheel already on disk here; a bare `torch` would pull several GB of CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# The README's datasets 3.6 line, `pip install -e ".[datasets3]"`, and nothing else, in a venv whose .pth adds .venv's
# packages: only datasets 3.6, its pins (dill, fsspec, multiprocess) and librosa's stack land here.
$(VENV_DATASETS3)/.installed: $(VENV)/.installed
	$(PYTHON) -m venv $(VENV_DATASETS3)
	$(VENV_DATASETS3)/bin/python -c 'import pathlib, sys, sysconfig; \
		lib = pathlib.Path(sysconfig.get_path("purelib")); base = pathlib.Path("$(VENV)").resolve() / lib.relative_to(sys.prefix); \
		(lib / "base-venv.pth").write_text(f"import site; site.addsitedir({str(base)!r})\n")'
	$(VENV_DATASETS3)/bin/pip install -q -e ".[datasets3]"
	touch $@

# FFmpeg's shared libraries, which torchcodec (datasets >= 4's audio decoder, in the test extra) loads. Quick when they
# are there (ldconfig's cache, or a torchcodec that already loads, e.g. with conda's FFmpeg); installed from the distro
# when missing and we are root on Debian/Ubuntu; otherwise the command is printed and the decode test says it too.
ffmpeg: $(VENV)/.installed
	@if $(PYTHON) -c 'import ctypes.util, sys; sys.exit(ctypes.util.find_library("avutil") is None)' \
		|| $(BIN)/python -c 'import torchcodec.decoders' 2>/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing FFmpeg's libraries for torchcodec: apt-get install --no-install-recommends ffmpeg"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null; \
	else \
		echo "FFmpeg's libraries are missing: torchcodec needs them to decode audio on datasets >= 4. Install FFmpeg 4-8" \
			"(Debian/Ubuntu: sudo apt-get install ffmpeg; conda: conda install -c conda-forge 'ffmpeg<9')." >&2; \
	fi

demo: $(VENV)/.installed
	$(BIN)/python tools/offline_whisper.py --output_dir models/whisper-base
	$(BIN)/accelerate launch --config_file configs/cpu.yaml train_accelerate.py --config configs/demo.yaml

# Lint, the whole suite on the current stack (datasets 5.x), then the data tests again under datasets 3.6.
test: $(VENV)/.installed $(VENV_DATASETS3)/.installed ffmpeg lint
	$(BIN)/python -m pytest -q
	$(VENV_DATASETS3)/bin/python -m pytest -q $(DATA_TESTS)

# While developing: the suite without the tests marked slow (real models, several processes), in under 3 minutes.
test-fast: $(VENV)/.installed ffmpeg
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(VENV_DATASETS3) models runs .cache
