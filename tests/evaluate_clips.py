"""Clips of the sample corpus with known transcripts, and a Trainer that evaluates on them (test_evaluation.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from accelerate import Accelerator

from kspon_dataset.corpus import Selection
from kspon_whisper.data import Split
from train_accelerate import Trainer, parse_config

SAMPLE_CORPUS = Path(__file__).resolve().parent.parent / "kspon_dataset" / "sample"
# Six espeak-ng utterances of the sample corpus' training split, the ones Whisper base transcribes best: per-clip CER
# 0 to 0.44 when every clip of the corpus was scored (it scores 0.90 on the validation split: the voice is robotic).
CLIPS = (
    "KsponSpeech_620004",  # 아 깜짝이야
    "KsponSpeech_185005",  # 아 진짜 짜증나
    "KsponSpeech_123005",  # 요즘 뭐 재밌는 거 없어?
    "KsponSpeech_372003",  # 음 그건 좀 생각해 볼게
    "KsponSpeech_309002",  # 아 맞다 그거
    "KsponSpeech_123007",  # 10 분만 기다려
)
BATCH_SIZE = 3  # rows of different lengths share a batch, so padding tokens appear in the generated ids
MAX_NEW_TOKENS = 32  # the longest transcript is 12 tokens; a runaway decode is cut here


def clip_trainer(model_dir: str | Path, output_dir: str | Path, accelerator: Accelerator) -> Trainer:
    """A Trainer whose validation split is CLIPS, generating greedily as `--num_beams 1` training runs do."""
    cfg = parse_config(
        ["--model_name_or_path", str(model_dir), "--data_dir", str(SAMPLE_CORPUS), "--output_dir", str(output_dir)]
        + ["--max_steps", "1", "--per_device_batch_size", str(BATCH_SIZE), "--num_workers", "0"]
        + ["--num_beams", "1", "--generation_max_new_tokens", str(MAX_NEW_TOKENS), "--report_to", "none"]
        + ["--gradient_checkpointing", "false"]
    )
    trainer = Trainer(cfg, accelerator)
    trainer.splits["validation"] = only(CLIPS, trainer.splits["train"], trainer.splits["test"])
    return trainer


def only(ids: tuple[str, ...], *splits: Split) -> Split:
    """The utterances `ids` of streamed splits of one download, as one split."""
    found = [(split.data, i) for split in splits for i in range(len(split)) if split.data.utterance(i)[2] in ids]
    if sorted(found_id := [data.utterance(i)[2] for data, i in found]) != sorted(ids):
        raise ValueError(f"clips missing from the sample's splits: {sorted(set(ids) - set(found_id))}")
    pick = {name: np.array([getattr(data, name)[i] for data, i in found]) for name in ("source", "row", "folder")}
    selection = Selection(found[0][0].sources, **pick, tally=Counter(seen=len(found), candidates=len(found)))
    return Split(selection, selection.tally, splits[0].form)
