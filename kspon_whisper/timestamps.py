"""Timestamp tokens in a share of the training labels, so that fine-tuning keeps Whisper's timestamp prediction.

Labels that all start `<|notimestamps|>` teach the model to drop timestamps, and a model fine-tuned that way no longer
predicts them (transformers#30148), which breaks `return_timestamps=True` and long-form transcription. distil-whisper
keeps timestamps in ~20 % of its labels (`timestamp_probability`) for this reason. KsponSpeech has no word or segment
alignments, so a timestamped label is one segment spanning the clip, `<|0.00|> text <|T|>`, with T the clip's duration:
its clips are segmented utterances with little silence after the speech, so the clip's end stands in for the speech's.

Which labels carry timestamps is a hash of (seed, epoch, utterance id), not a random draw in a DataLoader worker: every
rank and worker agrees, a resumed run makes the same choices, and each epoch draws afresh.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import GenerationConfig, PreTrainedTokenizerBase

from .draws import drawn

TIME_PRECISION = 0.02  # seconds per timestamp token, as in Whisper's tokenizer
MAX_TIMESTAMP_STEPS = 1500  # <|30.00|>: Whisper's window is 30 s


@dataclass(frozen=True)
class TimestampLabels:
    """Turns a share `probability` of `<|notimestamps|>` labels into `<|0.00|> text <|T|>` labels."""

    probability: float  # share of labels that carry timestamps, in [0, 1]
    seed: int  # the run's seed: another seed picks other utterances
    no_timestamps_id: int  # <|notimestamps|>
    timestamp_ids: tuple[int, ...]  # ids of <|0.00|>, <|0.02|>, ..., <|30.00|>

    def __post_init__(self) -> None:
        if not 0 <= self.probability <= 1:
            raise ValueError(f"timestamp probability must be in [0, 1], got {self.probability}.")

    def __call__(self, labels: list[int], utterance_id: str, seconds: float, epoch: int) -> list[int]:
        """`labels` (from a tokenizer whose prefix ends `<|notimestamps|>`), timestamped if this one is chosen."""
        if not self.chosen(utterance_id, epoch):
            return labels
        return self.timestamped(labels, seconds)

    def chosen(self, utterance_id: str, epoch: int) -> bool:
        return drawn(self.probability, self.seed, epoch, utterance_id)

    def timestamped(self, labels: list[int], seconds: float) -> list[int]:
        """`<|startoftranscript|><|ko|><|transcribe|><|notimestamps|> text <|endoftext|>` becomes
        `<|startoftranscript|><|ko|><|transcribe|><|0.00|> text <|T|><|endoftext|>`, T = `seconds` on the grid."""
        if self.no_timestamps_id not in labels:
            raise ValueError(
                "Labels to timestamp must come from a tokenizer whose prefix ends with <|notimestamps|> "
                "(`tokenizer.set_prefix_tokens(..., predict_timestamps=False)`); got none in "
                f"{labels[:6]}..."
            )
        start = labels.index(self.no_timestamps_id)
        text = labels[start + 1 : -1]
        return [*labels[:start], self.timestamp_ids[0], *text, self.end_id(seconds), labels[-1]]

    def end_id(self, seconds: float) -> int:
        """The timestamp token nearest to `seconds` on the 0.02 s grid, at most <|30.00|>."""
        return self.timestamp_ids[min(round(seconds / TIME_PRECISION), MAX_TIMESTAMP_STEPS)]


def timestamp_labels(
    tokenizer: PreTrainedTokenizerBase, generation_config: GenerationConfig, *, probability: float, seed: int
) -> TimestampLabels | None:
    """The training labels' timestamper for this model, or None when `probability` is 0.

    The ids come from the tokenizer by name and are checked against the generation config, where `generate` takes
    the first timestamp to be `no_timestamps_token_id + 1`: a model that disagrees would be trained on one id and
    asked for another.
    """
    if probability == 0:
        return None
    names = [f"<|{step * TIME_PRECISION:.2f}|>" for step in range(MAX_TIMESTAMP_STEPS + 1)]
    ids = tuple(tokenizer.convert_tokens_to_ids(names))
    no_timestamps_id = tokenizer.convert_tokens_to_ids("<|notimestamps|>")
    unknown = [name for name, i in zip(names, ids, strict=True) if i in (None, tokenizer.unk_token_id)]
    if unknown or no_timestamps_id in (None, tokenizer.unk_token_id):
        raise ValueError(
            f"This tokenizer has no Whisper timestamp tokens (first missing: {(unknown or ['<|notimestamps|>'])[0]}); "
            "train with --timestamp_probability 0."
        )
    expected = generation_config.no_timestamps_token_id
    if expected != no_timestamps_id or ids != tuple(range(ids[0], ids[0] + len(ids))) or ids[0] != expected + 1:
        raise ValueError(
            f"The tokenizer's <|notimestamps|> is {no_timestamps_id} and <|0.00|> ... <|30.00|> are {ids[0]} ... "
            f"{ids[-1]}, but generation_config.no_timestamps_token_id is {expected} (generate expects <|0.00|> right "
            "after it, the rest consecutive). Load the tokenizer and the model from the same checkpoint, or train "
            "with --timestamp_probability 0."
        )
    return TimestampLabels(probability, seed, no_timestamps_id, ids)
