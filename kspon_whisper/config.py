"""The one typed config of train_accelerate.py: each option with its meaning, units, default and valid values.

`--help` is generated from it (field help, `Literal` choices, RANGES), a --config YAML/JSON file fills in what the
command line leaves out, and every value is checked at start, before anything loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, get_args, get_origin, get_type_hints

import yaml
from transformers import HfArgumentParser

from kspon_dataset.corpus import SPLIT_SCHEMES
from kspon_dataset.normalize import TRANSCRIPT_FORMS

from .export import QUANTIZATIONS, check_export_options
from .extra_data import SpeechSet, speech_sets
from .inference import MAX_NEW_TOKENS, NUM_BEAMS

logger = logging.getLogger(__name__)
HELD_OUT_SPLITS = ("validation", "test", "eval_clean", "eval_other")


@dataclass
class TrainConfig:
    # model
    model_name_or_path: str = field(
        default="openai/whisper-large-v3",
        metadata={"help": "Hub id or local folder of the Whisper model to fine-tune"},
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = field(
        default="sdpa", metadata={"help": "attention kernel; flash_attention_2 needs the flash-attn package"}
    )
    sdpa_cudnn: bool = field(
        default=False,
        metadata={"help": "allow cuDNN's SDPA kernel (off: it re-plans per shape and gave NaNs in bf16 backward)"},
    )
    torch_compile: bool = field(
        default=False, metadata={"help": "torch.compile the model; labels are bucketed so shapes stay few"}
    )
    gradient_checkpointing: bool = field(
        default=True, metadata={"help": "recompute activations in backward: ~1/3 more compute, far less memory"}
    )
    freeze_encoder: bool = field(
        default=False, metadata={"help": "train the decoder only (with LoRA: adapters in the decoder only)"}
    )
    lora_rank: int = field(
        default=0, metadata={"help": "LoRA adapter rank (8-32 typical); 0 trains every weight (full fine-tuning)"}
    )
    lora_alpha: int | None = field(
        default=None,
        metadata={
            "help": "LoRA scale: adapter updates are multiplied by alpha / rank; more than 0 (None: 2 x lora_rank)"
        },
    )
    lora_dropout: float = field(
        default=0.0,
        metadata={
            "help": "dropout on the adapters' input, in [0, 1); above 0 each adapter saves its own mask and input copy"
        },
    )
    lora_mlp: bool = field(
        default=False, metadata={"help": "adapt each layer's fc1/fc2 too, not only the attention projections"}
    )
    apply_spec_augment: bool = field(
        default=False,
        metadata={"help": "SpecAugment: mask random frames and mel bins of the log-mel input in training"},
    )
    mask_time_prob: float = field(
        default=0.05, metadata={"help": "share of frames masked with --apply_spec_augment, in [0, 1]"}
    )
    mask_feature_prob: float = field(
        default=0.0, metadata={"help": "share of mel bins masked with --apply_spec_augment, in [0, 1]"}
    )
    # data
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "folder holding the KsponSpeech ZIPs (or their extracted folders); required unless --push_only"
        },
    )
    dataset_config: Literal[TRANSCRIPT_FORMS] = field(
        default="spelling",
        metadata={
            "help": "transcript form: spelling keeps the written side of each (A)/(B) pair (numbers as digits), "
            "phonetic the spoken side (numbers in Hangul)"
        },
    )
    split_scheme: Literal[SPLIT_SCHEMES] = field(
        default="random",
        metadata={
            "help": "random: 8:1:1 by recording folder; random_utterance: 8:1:1 by utterance (leaks conversations "
            "into the held-out splits); official: AI Hub's dev folders 0621-0623 as validation, no test split"
        },
    )
    streaming: bool = field(
        default=True,
        metadata={"help": "read straight from the ZIPs; false prepares Arrow files first (map-style)"},
    )
    train_datasets: str | None = field(
        default=None,
        metadata={
            "help": "other speech sets to train on beside KsponSpeech: Hub ids or local paths (an audiofolder, a "
            "folder of Parquet files) joined with '+'; resampled to 16 kHz, transcripts by the plain rule (README)"
        },
    )
    train_dataset_weights: str | None = field(
        default=None,
        metadata={
            "help": "each --train_datasets set's share of the training examples ('+'-joined, e.g. 0.2+0.1), each "
            "more than 0, summing to less than 1: KsponSpeech takes the rest, and a pass reads it once"
        },
    )
    train_dataset_config_name: str | None = field(
        default=None, metadata={"help": "config of each --train_datasets set ('+'-joined, one for all or one per set)"}
    )
    train_split_name: str = field(
        default="train", metadata={"help": "split of each --train_datasets set ('+'-joined)"}
    )
    train_text_column_name: str = field(
        default="text", metadata={"help": "transcript column of each --train_datasets set ('+'-joined)"}
    )
    train_audio_column_name: str = field(
        default="audio", metadata={"help": "audio column of each --train_datasets set ('+'-joined)"}
    )
    num_workers: int = field(default=4, metadata={"help": "DataLoader worker processes per rank"})
    log_mel_on_device: bool = field(
        default=True,
        metadata={
            "help": "ship int16 audio and compute log-mel on the accelerator (false: in the DataLoader workers)"
        },
    )
    label_bucket: int | None = field(
        default=None,
        metadata={"help": "pad label length to a multiple of this (None: 16 with --torch_compile, else no padding)"},
    )
    timestamp_probability: float = field(
        default=0.2,
        metadata={"help": "share of training labels that carry timestamp tokens, in [0, 1]; 0 turns it off"},
    )
    feature_padding_probability: float = field(
        default=0.5,
        metadata={
            "help": "share of training examples padded as faster-whisper pads them (the clip's log-mel, zero-padded "
            "to 3,000 frames) instead of as Transformers and openai-whisper do (the waveform zero-padded to 30 s); "
            "in [0, 1], 0 turns it off"
        },
    )
    # optimisation
    per_device_batch_size: int = field(default=16, metadata={"help": "examples per micro-batch per process"})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "micro-batches per optimizer step (fewer at the end of an epoch)"}
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay"})
    lr_scheduler: Literal["linear", "cosine"] = field(
        default="linear", metadata={"help": "learning-rate decay to 0 after warmup"}
    )
    warmup_steps: int = field(default=500, metadata={"help": "optimizer steps of linear warmup from 0"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps to train; 0: --num_epochs passes"})
    num_epochs: float = field(
        default=3.0,
        metadata={
            "help": "passes over the training split when --max_steps is 0, streamed or not (the index gives a pass's "
            "length); more than 0"
        },
    )
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "clip the gradient norm to this; a non-finite norm skips the step"}
    )
    seed: int = field(
        default=42, metadata={"help": "seeds model init, data order and dropout; a resumed run reproduces it exactly"}
    )
    # evaluation
    eval_every: int = field(
        default=1000, metadata={"help": "optimizer steps between validation runs (0: only at the end)"}
    )
    max_eval_samples: int | None = field(
        default=512, metadata={"help": "validation utterances per periodic evaluation (None: all); final ones use all"}
    )
    eval_before_training: bool = field(
        default=False,
        metadata={"help": "score validation and the --eval_datasets once before the first step (the card shows both)"},
    )
    final_eval_splits: list[str] = field(
        default_factory=lambda: ["test", "eval_clean", "eval_other"],
        metadata={
            "help": f"held-out splits scored at the end, from {', '.join(HELD_OUT_SPLITS)}",
            "choices": HELD_OUT_SPLITS,
            "metavar": "SPLIT",
        },
    )
    eval_datasets: str | None = field(
        default=None,
        metadata={
            "help": "other speech sets scored beside validation at every evaluation and at the end: Hub ids or local "
            "paths (an audiofolder, a folder of Parquet files), joined with '+' (google/fleurs+/data/clips); "
            "transcripts normalised by the plain rule (README)"
        },
    )
    eval_dataset_config_name: str | None = field(
        default=None, metadata={"help": "config of each --eval_datasets set ('+'-joined, one for all or one per set)"}
    )
    eval_split_name: str = field(default="test", metadata={"help": "split of each --eval_datasets set ('+'-joined)"})
    eval_text_column_name: str = field(
        default="text", metadata={"help": "transcript column of each --eval_datasets set ('+'-joined)"}
    )
    eval_audio_column_name: str = field(
        default="audio",
        metadata={"help": "audio column of each --eval_datasets set ('+'-joined), resampled to 16 kHz"},
    )
    num_beams: int = field(default=NUM_BEAMS, metadata={"help": "beam size for generation during evaluation"})
    generation_max_new_tokens: int = field(
        default=MAX_NEW_TOKENS, metadata={"help": "cap on generated tokens per utterance during evaluation"}
    )
    # logging and checkpoints
    output_dir: str = field(
        default="runs/whisper-ko",
        metadata={"help": "folder for the model, metrics, predictions, model card, checkpoints and logs"},
    )
    log_every: int = field(default=25, metadata={"help": "optimizer steps between log lines"})
    report_to: Literal["tensorboard", "trackio", "wandb", "none"] = field(
        default="tensorboard", metadata={"help": "Accelerate tracker that receives the logged metrics"}
    )
    save_every: int = field(
        default=1000, metadata={"help": "optimizer steps between checkpoints (0: only at the end)"}
    )
    save_total_limit: int = field(default=2, metadata={"help": "complete checkpoints kept; older ones are deleted"})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "continue a run: latest (the newest in OUTPUT_DIR/checkpoints) or a checkpoint folder"},
    )
    ddp_timeout: int = field(
        default=3600,
        metadata={
            "help": "seconds a rank waits at a collective for the others. Rank 0 works alone at times (preparing "
            "map-style data, verifying a checkpoint, the export and the push) while the others wait: NCCL's own "
            "600 s would end the run"
        },
    )
    trained_ids_dir: str | None = field(
        default=None,
        metadata={"help": "debug: write the ids each rank trained on per epoch, and a weights digest, to this folder"},
    )
    # Hub
    push_to_hub: bool = field(
        default=False, metadata={"help": "push the final model (one atomic commit) and its card to --hub_model_id"}
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "user/name of the Hub model repo"})
    hub_private: bool = field(default=False, metadata={"help": "create the Hub repo private"})
    push_only: bool = field(default=False, metadata={"help": "skip training: push an existing --output_dir"})
    # faster-whisper
    export_ct2: Literal[QUANTIZATIONS] | None = field(
        default=None,
        metadata={
            "help": "at the end, also write a CTranslate2 copy for faster-whisper in this quantization to "
            "OUTPUT_DIR/ct2-<this> (float16 decodes as the model does; int8 changed about half the measured clips)"
        },
    )

    # option: (lowest valid value, whether it may equal it); --help shows them too (parse_config)
    RANGES: ClassVar[dict[str, tuple[float, bool]]] = {
        "per_device_batch_size": (1, True),
        "gradient_accumulation_steps": (1, True),
        "log_every": (1, True),
        "learning_rate": (0, False),
        "max_grad_norm": (0, False),  # a negative threshold would scale gradients by a negative factor
        "max_steps": (0, True),
        "warmup_steps": (0, True),
        "weight_decay": (0, True),
        "num_workers": (0, True),
        "eval_every": (0, True),
        "save_every": (0, True),
        "save_total_limit": (1, True),
        "generation_max_new_tokens": (1, True),
        "num_beams": (1, True),
        "ddp_timeout": (1, True),
    }

    def __post_init__(self):
        for name, valid in self.choices().items():  # argparse checks the command line, not values from --config
            if getattr(self, name) not in valid:
                raise ValueError(f"--{name} {getattr(self, name)!r} is not one of {valid}.")
        if self.data_dir is None and not self.push_only:
            raise ValueError("--data_dir is required: the folder holding KsponSpeech_01.zip ... (see README).")
        if self.export_ct2 is not None:  # an unknown choice or a missing ctranslate2 fails now, not after training
            check_export_options(self.export_ct2)
        if (self.push_to_hub or self.push_only) and not self.hub_model_id:
            raise ValueError("--push_to_hub/--push_only need --hub_model_id user/name.")
        for name, (low, inclusive) in self.RANGES.items():
            value = getattr(self, name)
            if value < low or (value == low and not inclusive):
                raise ValueError(f"--{name} must be {self.valid_range(name)}, got {value}.")
        for name in ("mask_time_prob", "mask_feature_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(
                    f"--{name} must be in [0, 1] (a share of frames or mel bins), got {getattr(self, name)}."
                )
        if self.max_steps == 0 and self.num_epochs <= 0 and not self.push_only:
            raise ValueError(f"--num_epochs must be more than 0 when --max_steps is 0, got {self.num_epochs}.")
        resume = self.resume_from_checkpoint
        if resume not in (None, "latest") and not Path(resume).is_dir():
            raise ValueError(f"--resume_from_checkpoint {resume} is not a folder; pass a checkpoint folder or latest.")
        self.check_lora()
        if not 0 <= self.timestamp_probability <= 1:
            raise ValueError(
                f"--timestamp_probability must be in [0, 1] (a share of the training labels), got "
                f"{self.timestamp_probability}; 0 turns timestamp labels off."
            )
        if not 0 <= self.feature_padding_probability <= 1:
            raise ValueError(
                f"--feature_padding_probability must be in [0, 1] (a share of the training examples), got "
                f"{self.feature_padding_probability}; 0 turns it off."
            )
        if isinstance(self.final_eval_splits, str):  # `final_eval_splits: test` in YAML is one name, not letters
            self.final_eval_splits = self.final_eval_splits.replace(",", " ").split()
        self.eval_sets()  # a '+'-joined option with the wrong number of values fails now
        self.train_weights()
        unknown = sorted(set(self.final_eval_splits) - set(HELD_OUT_SPLITS))
        if unknown:
            raise ValueError(
                f"--final_eval_splits {unknown} are not splits of KsponSpeech; choose from {HELD_OUT_SPLITS}."
            )

    def eval_sets(self) -> list[SpeechSet]:
        """The --eval_datasets, one SpeechSet each."""
        return self._sets("eval_datasets", "eval_dataset_config_name", "eval_split_name", "eval_text_column_name",
                          "eval_audio_column_name")  # fmt: skip

    def train_sets(self) -> list[SpeechSet]:
        """The --train_datasets, one SpeechSet each."""
        return self._sets("train_datasets", "train_dataset_config_name", "train_split_name", "train_text_column_name",
                          "train_audio_column_name")  # fmt: skip

    def _sets(self, *names: str) -> list[SpeechSet]:
        return speech_sets(*(getattr(self, name) for name in names), options=tuple(f"--{name}" for name in names))

    def train_weights(self) -> list[float]:
        """Each --train_datasets set's share of the training examples, checked."""
        sets, given = self.train_sets(), self.train_dataset_weights
        if not sets:
            if given:
                raise ValueError("--train_dataset_weights weighs the --train_datasets sets: give those too.")
            return []
        try:
            weights = [float(weight) for weight in str(given or "").split("+")]
        except ValueError:
            weights = []
        if len(weights) != len(sets) or not all(w > 0 for w in weights) or sum(weights) >= 1:
            raise ValueError(
                f"--train_dataset_weights {given} must give each of the {len(sets)} --train_datasets sets a share "
                "of the training examples, '+'-joined, each more than 0 and together less than 1 (KsponSpeech takes "
                "the rest): e.g. " + "+".join(["0.1"] * len(sets)) + "."
            )
        return weights

    @classmethod
    def choices(cls) -> dict[str, tuple]:
        """The values of each option typed `Literal[...]`: the one list, which --help shows and argparse enforces."""
        found = {}
        for name, hint in get_type_hints(cls).items():
            literal = next((t for t in (hint, *get_args(hint)) if get_origin(t) is Literal), None)
            if literal is not None:  # `Literal[...] | None` also takes None (export_ct2: no export)
                found[name] = get_args(literal) + ((None,) if type(None) in get_args(hint) else ())
        return found

    @classmethod
    def valid_range(cls, name: str) -> str:
        low, inclusive = cls.RANGES[name]
        return f"{'at least' if inclusive else 'more than'} {low}"

    def check_lora(self) -> None:
        if self.lora_rank < 0:
            raise ValueError(
                f"--lora_rank must be 0 (full fine-tuning) or an adapter rank such as 16, not {self.lora_rank}."
            )
        if not self.lora_rank:
            if self.lora_mlp or self.lora_alpha is not None:
                raise ValueError("--lora_alpha and --lora_mlp shape LoRA adapters: set --lora_rank too (e.g. 16).")
            return
        # alpha tied to the rank keeps the update scale alpha / rank at 2 whatever the rank, so changing the rank
        # does not silently change the step size (a fixed alpha of 64 scales rank 8 by 8 and rank 32 by 2).
        self.lora_alpha = 2 * self.lora_rank if self.lora_alpha is None else self.lora_alpha
        if self.lora_alpha <= 0:
            raise ValueError(f"--lora_alpha must be positive (default 2 x lora_rank), got {self.lora_alpha}.")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}.")


def check_splits(cfg: TrainConfig, splits: dict) -> None:
    """Before any training: the splits this run needs are there, or the error says which archive holds them."""
    where = {
        "train": "KsponSpeech_01.zip ... KsponSpeech_05.zip",
        "validation": "KsponSpeech_05.zip (with split_scheme official: folders 0621-0623, listed in dev.trn)",
        "test": "the training ZIPs (split_scheme official has no test split: use eval_clean / eval_other)",
        "eval_clean": "KsponSpeech_eval.zip",
        "eval_other": "KsponSpeech_eval.zip",
    }
    needed = ["train"] + (["validation"] if cfg.eval_every or cfg.eval_before_training else [])
    missing = [split for split in needed if split not in splits]
    if missing:
        raise ValueError(
            f"{cfg.data_dir} gives no {' or '.join(missing)} split with --split_scheme {cfg.split_scheme}: it comes "
            f"from {'; '.join(where[split] for split in missing)}. Add it to the data_dir"
            + (", or set --eval_every 0 --eval_before_training false." if missing == ["validation"] else ".")
        )
    for split in ["validation", *cfg.final_eval_splits]:
        if split not in splits:
            logger.warning(
                f"{split} will not be scored: {cfg.data_dir} does not provide it (it comes from {where[split]})."
            )


def parse_options(argv: list[str] | None, runbook: str) -> TrainConfig:
    """Options from an optional --config YAML/JSON file, overridden by the command line; --help opens with runbook."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,  # so that the namespace of TrainConfig's parser holds its fields alone
        help="YAML/JSON file of `option: value` lines; options on the command line override it",
    )
    known, rest = pre.parse_known_args(argv)

    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        """Each option's default after its help; the description (the module's runbook) as written."""

    parser = HfArgumentParser(
        TrainConfig,
        parents=[pre],  # --help lists --config first
        usage="%(prog)s [-h] [--config FILE] [--OPTION VALUE ...]",
        description=f"{runbook}\nA switch alone turns it on; `--streaming false` (or `--no_streaming`) turns it off.",
        formatter_class=Formatter,
    )
    if "config" in known:
        try:
            values = yaml.safe_load(Path(known.config).read_text()) or {}  # YAML is a superset of JSON
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"--config {known.config} cannot be read as YAML/JSON: {err}") from err
        if not isinstance(values, dict):
            raise ValueError(f"{known.config} must map option names to values (`max_steps: 100`), not {values!r}.")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TrainConfig)})
        if unknown:
            raise ValueError(f"{known.config}: unknown options {unknown}; see `train_accelerate.py --help`.")
        parser.set_defaults(**values)
    for action in parser._actions:  # argparse has no public list of its actions
        if action.option_strings[0] == f"--no_{action.dest}":  # its help and default False are copied from --x's
            action.help, action.default = f"same as --{action.dest} false", argparse.SUPPRESS
        elif action.dest in TrainConfig.RANGES:
            action.help += f"; {TrainConfig.valid_range(action.dest)}"
    (config,) = parser.parse_args_into_dataclasses(rest)
    return config
