"""`ds["train"][0]["audio"]["array"]` as users write it, on the embedded sample, under both datasets worlds.

Every other data test reads the WAV bytes (`decode=False`), as the trainer does; users decode. datasets 3.x decodes
through librosa and soundfile (the `datasets3` extra), datasets >= 4 through torchcodec and FFmpeg (the test extra's
pin, `make ffmpeg`). Where those are missing the tests skip naming what to install, and fail under CI (CI=true):
a skipped test would hide that the README's install lines no longer decode.
"""

import os
import zipfile
from pathlib import Path

import datasets
import numpy as np
import pytest

from kspon_dataset import load_kspon
from kspon_dataset.sample_corpus import member_path
from kspon_whisper.audio import read_audio

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CORPUS = REPO / "kspon_dataset" / "sample"
SCRIPT_LOADING = int(datasets.__version__.split(".")[0]) < 4
UNDER_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")


def missing_decoder() -> str | None:
    """Why the installed datasets cannot decode `Audio` here, with the install line; None when it can."""
    if SCRIPT_LOADING:
        try:
            import librosa  # noqa: F401
            import soundfile  # noqa: F401
        except ImportError as err:
            return (
                f"datasets {datasets.__version__} decodes audio through librosa and soundfile ({err}): "
                'pip install -e ".[datasets3]"'
            )
        return None
    try:
        import torchcodec.decoders  # noqa: F401  (loads FFmpeg's libraries)
    except (ImportError, OSError, RuntimeError) as err:
        return (
            f"datasets {datasets.__version__} decodes audio through torchcodec, which does not load ({gist(err)}): "
            "install FFmpeg 4-8 (`make ffmpeg` as root, or apt-get install ffmpeg) and the torchcodec built for "
            'your torch (torchcodec==0.13.* for torch 2.13: pip install -e ".[test]")'
        )
    return None


def gist(err: Exception) -> str:
    """torchcodec's load error is a page of tracebacks, one per FFmpeg major; keep its first line and the causes."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    causes = [line for line in lines if "cannot open shared object" in line or "undefined symbol" in line]
    return "; ".join(dict.fromkeys([lines[0], *causes[:3]]))


def require_decoder() -> None:
    reason = missing_decoder()
    if reason is not None:
        (pytest.fail if UNDER_CI else pytest.skip)(reason)


def pcm_int16(uid: str, tmp_path: Path) -> np.ndarray:
    """The utterance's samples as the project's own reader gives them, from the .pcm member in AI Hub's ZIP."""
    member = member_path(uid) + ".pcm"
    with zipfile.ZipFile(SAMPLE_CORPUS / f"{member.split('/')[0]}.zip") as archive:
        path = tmp_path / f"{uid}.pcm"
        path.write_bytes(archive.read(member))
    return read_audio(path, dtype="int16")


def assert_decodes_to_the_pcm(example: dict, tmp_path: Path) -> None:
    audio = example["audio"]
    assert audio["sampling_rate"] == 16_000
    decoded = np.asarray(audio["array"], dtype=np.float64)
    expected = pcm_int16(example["id"], tmp_path).astype(np.float64) / 32768
    assert decoded.shape == expected.shape, example["id"]
    np.testing.assert_allclose(decoded, expected, rtol=0, atol=1 / 32768, err_msg=example["id"])


def test_load_kspon_decodes_audio_as_users_do(tmp_path):
    """`load_kspon`, the call that works on every release, decoded through datasets (torchcodec on 5.x)."""
    require_decoder()
    kspon = load_kspon(str(SAMPLE_CORPUS))
    assert isinstance(kspon["train"].features["audio"], datasets.Audio), "the plain {bytes, path} fallback"
    assert_decodes_to_the_pcm(kspon["train"][0], tmp_path)


@pytest.mark.skipif(not SCRIPT_LOADING, reason="script loading ended with datasets 4.0; runs in .venv-datasets3")
def test_the_readmes_load_dataset_call_decodes_audio(tmp_path, monkeypatch):
    """The README's headline call, as written there: relative script path, trust_remote_code, decoded."""
    require_decoder()
    monkeypatch.chdir(REPO)
    kspon = datasets.load_dataset("./kspon_dataset", data_dir=str(SAMPLE_CORPUS), trust_remote_code=True)
    assert_decodes_to_the_pcm(kspon["train"][0], tmp_path)
