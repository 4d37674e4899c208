"""Fine-tune Whisper on KsponSpeech with a hand-written Accelerate loop.

One H100, the whole corpus, streamed from AI Hub's ZIPs (bf16, gradient checkpointing; accelerate_config.yaml):

    accelerate launch --config_file accelerate_config.yaml train_accelerate.py \\
        --data_dir /data/KsponSpeech --output_dir runs/ko-large-v3 --max_steps 20000 \\
        --push_to_hub --hub_model_id me/whisper-large-v3-ko

A 24 GB GPU: LoRA, `--lora_rank 16 --learning_rate 1e-4`: only low-rank adapters train, and the saved model is a plain
Whisper with the adapters merged in (kspon_whisper/lora.py; README "Smaller GPUs").

Several GPUs: `--config_file configs/ddp_8gpu.yaml` (or configs/fsdp_8gpu.yaml). The other ranks wait for rank 0
while it works alone (map-style preparation, the push) up to `--ddp_timeout` seconds (3600). Every option can also
come from a YAML/JSON file, with the command line taking precedence: `train_accelerate.py --config configs/demo.yaml
--learning_rate 1e-5`.

Kill it at any time and continue exactly where it was: `--resume_from_checkpoint latest` (checkpoints are written
atomically to OUTPUT_DIR/checkpoints every --save_every steps). Re-push a finished run: `--push_only`.
The Hub token comes from `HF_TOKEN` or `hf auth login`, never from the command line.

CPU demo on the embedded sample corpus (README command 1): `make demo`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import hashlib
import json
import logging
import math
import random
import sys
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar, Literal, get_args, get_origin, get_type_hints

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, ProjectConfiguration, set_seed
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import HfArgumentParser, WhisperForConditionalGeneration, WhisperProcessor, get_scheduler

from kspon_dataset.corpus import SPLIT_SCHEMES
from kspon_dataset.normalize import MODES as TRANSCRIPT_FORMS
from kspon_whisper.checkpoints import (
    check_full_model,
    load_loop_state,
    on_every_rank,
    resolve_checkpoint,
    save_checkpoint,
    save_final_model,
)
from kspon_whisper.data import (
    ModelInputs,
    PassCounter,
    batches_per_pass,
    load_splits,
    make_dataloader,
    set_epoch,
    speech_batcher,
)
from kspon_whisper.evaluation import evaluate_split, write_predictions
from kspon_whisper.export import QUANTIZATIONS, check_export_options, export_ct2
from kspon_whisper.hub import check_hub_access, push_output_dir
from kspon_whisper.inference import MAX_NEW_TOKENS, NUM_BEAMS, GenerationSettings, set_korean_transcription
from kspon_whisper.lora import add_lora, merge_lora, parameter_line
from kspon_whisper.metrics import METRICS, SCORING_NORMALIZATION, format_scores
from kspon_whisper.model_card import NOT_HYPERPARAMETERS, write_model_card
from kspon_whisper.timestamps import timestamp_labels

logger = logging.getLogger("train_accelerate")
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
        default=False, metadata={"help": "score the validation split once before the first step"}
    )
    final_eval_splits: list[str] = field(
        default_factory=lambda: ["test", "eval_clean", "eval_other"],
        metadata={
            "help": f"held-out splits scored at the end, from {', '.join(HELD_OUT_SPLITS)}",
            "choices": HELD_OUT_SPLITS,
            "metavar": "SPLIT",
        },
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
        unknown = sorted(set(self.final_eval_splits) - set(HELD_OUT_SPLITS))
        if unknown:
            raise ValueError(
                f"--final_eval_splits {unknown} are not splits of KsponSpeech; choose from {HELD_OUT_SPLITS}."
            )

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


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Options from an optional --config YAML/JSON file, overridden by the command line."""
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
        description=f"{__doc__}\nA switch alone turns it on; `--streaming false` (or `--no_streaming`) turns it off.",
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


def load_model(cfg: TrainConfig) -> tuple[WhisperForConditionalGeneration | PeftModel, WhisperProcessor]:
    processor = WhisperProcessor.from_pretrained(cfg.model_name_or_path)
    model = WhisperForConditionalGeneration.from_pretrained(
        cfg.model_name_or_path, attn_implementation=cfg.attn_implementation
    )
    configure_model(model, cfg)
    set_korean_transcription(model, processor)
    if cfg.lora_rank:
        model = add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_mlp, cfg.freeze_encoder)
    return model, processor


def configure_model(model: WhisperForConditionalGeneration, cfg: TrainConfig) -> None:
    """Korean transcription, and the training options of `cfg`, for a loaded or freshly built model."""
    model.train()  # from_pretrained returns eval mode, which silently turns off dropout, SpecAugment and checkpointing
    set_korean_transcription(model)
    model.config.use_cache = False  # the KV cache only helps generation; in training it holds memory for nothing
    model.config.apply_spec_augment = cfg.apply_spec_augment
    model.config.mask_time_prob = cfg.mask_time_prob
    model.config.mask_feature_prob = cfg.mask_feature_prob
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.freeze_encoder:
        model.model.encoder.requires_grad_(False)


def training_step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    window: list[tuple[dict, float]],
    max_grad_norm: float,
    model_inputs: Callable[[dict], dict] = dict,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One optimizer step on a window of (batch, weight) micro-batches; returns (loss, grad_norm, stepped).

    The objective is the summed token loss of the window on every rank over the number of those tokens, so that
    4 x 2 accumulation is the batch of 8 even when label lengths differ (the model's loss is a per-micro-batch
    mean). `weight` is 0 for the filler batch of a rank whose data ran out before the others' (`ranked_batches`).
    The returned loss, averaged over ranks, is the window's mean token loss.

    Not `accelerator.accumulate`: it counts micro-batches itself and knows epoch ends only from a prepared loader
    (ours is not prepared), so its steps would straddle epochs, and its backward divides by the nominal window
    size, which is wrong for the shorter last window of an epoch.
    """
    tokens = [label_tokens(batch) * weight for batch, weight in window]
    total = accelerator.reduce(torch.tensor(float(sum(tokens)), device=accelerator.device), reduction="sum")
    scale = accelerator.num_processes / max(total.item(), 1.0)  # DDP averages gradients over ranks; this undoes it
    loss_sum = torch.zeros((), device=accelerator.device)
    for index, ((batch, _), num_tokens) in enumerate(zip(window, tokens, strict=True)):
        # Gradients are all-reduced once, in the window's last backward.
        last = index == len(window) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            loss = model(**model_inputs(batch)).loss * (num_tokens * scale)
            accelerator.backward(loss)
        loss_sum += loss.detach()
    # The norm is computed after the gradient all-reduce, so every rank takes the same decision here.
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    stepped = bool(torch.isfinite(grad_norm))  # note: a CPU-GPU sync point, once per optimizer step
    if stepped:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm, stepped


def label_tokens(batch: dict) -> int:
    """Label positions that count in the loss (padding is -100)."""
    return int((batch["labels"] != -100).sum())


def accumulation_windows(batches: Iterable[tuple[dict, float]], size: int) -> Iterator[list[tuple[dict, float]]]:
    """Group one epoch's micro-batches into windows of `size`; the epoch's last window holds what is left.

    Every rank gets the same number of micro-batches per epoch (`ranked_batches` fills in), so the windows agree.
    """
    window = []
    for item in batches:
        window.append(item)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def ranked_batches(accelerator: Accelerator, loader, after_first_fetch=None):
    """Yield (batch, weight) until every rank has run out of data, with no example seen twice.

    Ranks read different shards, so one can run out first. It then repeats its last batch with weight 0 so the
    gradient all-reduce stays in step (unequal shards would otherwise hang), and the epoch ends when all are done.
    Batches whose every row had too-long labels are folded into the next batch's `num_too_long`.
    """
    last, too_long, iterator = None, 0, iter(loader)
    while True:
        batch = next(iterator, None)
        if after_first_fetch is not None:
            after_first_fetch()
            after_first_fetch = None
        while batch is not None and not batch["id"]:
            too_long += batch["num_too_long"]
            batch = next(iterator, None)
        if accelerator.num_processes > 1:
            done = accelerator.reduce(torch.tensor(float(batch is None), device=accelerator.device))
            if done.item() == accelerator.num_processes:  # a sync point per micro-batch; tiny next to the step
                return
        elif batch is None:
            return
        if batch is None and last is None:
            raise RuntimeError(f"Rank {accelerator.process_index} has no training data: use fewer processes.")
        if batch is None:
            yield last, 0.0
            continue
        batch["num_too_long"] += too_long
        too_long, last = 0, batch
        yield batch, 1.0


class Trainer:
    """Holds what the loop shares; `fit` is the loop, the rest are its cadences."""

    def __init__(self, cfg: TrainConfig, accelerator: Accelerator):
        if cfg.lora_rank and accelerator.distributed_type == DistributedType.FSDP:
            # Training runs, but generation and the final merge need every weight on each rank, and neither gathers
            # a PeftModel's shards. Nor would sharding pay: LoRA's gradients and AdamW state are ~1 % of the model.
            raise ValueError(
                "--lora_rank does not run under FSDP. Launch with DDP (configs/ddp_8gpu.yaml): with LoRA each GPU "
                "holds the fp32 weights (large-v3: 6.2 GB) and activations, but gradients and optimizer state for the "
                "adapters only."
            )
        self.cfg, self.accelerator = cfg, accelerator
        self.output_dir = Path(cfg.output_dir)
        self.model, self.processor = load_model(cfg)
        self.generation = GenerationSettings(num_beams=cfg.num_beams, max_new_tokens=cfg.generation_max_new_tokens)
        self.generation.generate_kwargs(self.model.config, long_form=False)  # a budget that does not fit fails now
        self.model_inputs = ModelInputs(self.processor, accelerator.device)
        self.batcher = speech_batcher(
            self.processor,
            self.model.config,
            log_mel_on_device=cfg.log_mel_on_device,
            label_bucket=cfg.label_bucket or (16 if cfg.torch_compile else None),
        )
        # Only training labels carry timestamps, so that the model keeps predicting them (kspon_whisper/timestamps.py);
        # evaluation scores text generated without them.
        timestamps = timestamp_labels(
            self.processor.tokenizer,
            self.model.generation_config,
            probability=cfg.timestamp_probability,
            seed=cfg.seed,
        )
        self.train_batcher = dataclasses.replace(
            self.batcher, timestamps=timestamps, feature_padding=cfg.feature_padding_probability, seed=cfg.seed
        )
        with accelerator.main_process_first():  # rank 0 first: it prepares (map-style) and indexes the archives
            self.splits = load_splits(
                cfg.data_dir, config=cfg.dataset_config, split_scheme=cfg.split_scheme, streaming=cfg.streaming
            )
        check_splits(cfg, self.splits)
        self.train_loader = self.loader("train", shuffle=True)
        self.train_counts = PassCounter(self.splits["train"])
        self.data_counts: dict[str, dict] = {}  # split -> "kept N of M" counts of its last whole pass
        optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            fused=accelerator.device.type == "cuda",
        )
        self.planned_pass_steps = self.steps_per_pass()
        self.max_steps = cfg.max_steps or math.ceil(self.planned_pass_steps * cfg.num_epochs)
        # With --num_epochs, training also ends with its last pass: a pass that drops a whole batch for its content
        # (rare) is shorter than planned, and the schedule then ends a little before its last step.
        self.max_passes = math.ceil(cfg.num_epochs) if not cfg.max_steps else math.inf
        # The scheduler is stepped once per optimizer step by hand (a prepared one steps num_processes times).
        self.scheduler = get_scheduler(cfg.lr_scheduler, optimizer, cfg.warmup_steps, self.max_steps)
        if cfg.torch_compile:
            self.model = torch.compile(self.model)
        self.model, self.optimizer = accelerator.prepare(self.model, optimizer)
        accelerator.register_for_checkpointing(self.scheduler)
        self.step, self.epoch, self.skipped_steps, self.too_long = 0, 0, 0, 0
        self.pass_start_step = 0  # the step the current pass began at
        self.saved_step = 0  # the step of the last checkpoint saved or resumed
        self.before_training: dict | None = None  # validation metrics of the untouched model, when asked for
        self.trained_ids: dict[int, list[str]] = {}  # epoch -> ids of real batches, kept only with trained_ids_dir

    def say(self, message: str) -> None:
        """One line on the main process, above the progress bar rather than glued to it (so `grep ^step` works)."""
        if self.accelerator.is_main_process:
            tqdm.write(message)

    def loader(self, split: str, shuffle: bool = False):
        cfg, acc = self.cfg, self.accelerator
        return make_dataloader(
            self.splits[split],
            self.train_batcher if split == "train" else self.batcher,
            batch_size=cfg.per_device_batch_size,
            num_workers=cfg.num_workers,
            rank=acc.process_index,
            world_size=acc.num_processes,
            seed=cfg.seed,
            shuffle=shuffle,
        )

    def steps_per_pass(self) -> int:
        """Optimizer steps one pass over the training split takes, from the index alone when streaming."""
        # Ranks can hold one example more than others, and an epoch lasts as long as the longest rank (see
        # `ranked_batches`); every rank must agree on max_steps, or the schedules differ and the last reduce hangs.
        batches = torch.tensor(batches_per_pass(self.train_loader), device=self.accelerator.device)
        batches = int(self.accelerator.reduce(batches, reduction="max"))
        return math.ceil(batches / self.cfg.gradient_accumulation_steps)  # the last window ends with the epoch

    def describe(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        effective = cfg.per_device_batch_size * cfg.gradient_accumulation_steps * acc.num_processes
        per_epoch = f"{len(self.splits['train']):,} ({self.planned_pass_steps:,} optimizer steps)"
        self.say(
            f"effective batch {effective} = {cfg.per_device_batch_size} per device x {cfg.gradient_accumulation_steps}"
            f" accumulation x {acc.num_processes} processes | {self.max_steps:,} optimizer steps = "
            f"{self.max_steps * effective:,} samples | samples per epoch {per_epoch} | mixed precision "
            f"{acc.mixed_precision} | gradient checkpointing {cfg.gradient_checkpointing} | timestamp labels "
            f"{cfg.timestamp_probability:.0%}"
        )
        lora = f" | LoRA rank {cfg.lora_rank}, alpha {cfg.lora_alpha}, merged at the end" if cfg.lora_rank else ""
        self.say(parameter_line(acc.unwrap_model(self.model)) + lora)
        if cfg.lora_rank and cfg.learning_rate < 1e-4 and acc.is_main_process:
            logger.warning(
                f"--learning_rate {cfg.learning_rate:g} suits full fine-tuning; LoRA adapters usually train at "
                "1e-4 to 1e-3 (PEFT's Whisper example uses 1e-3)."
            )

    def resume(self) -> dict | None:
        # Verifying reads every byte of a checkpoint: rank 0 does it, and every rank resumes from what it found.
        resolve = partial(resolve_checkpoint, self.cfg.resume_from_checkpoint, self.output_dir / "checkpoints")
        checkpoint = on_every_rank(self.accelerator, resolve, main_only=True)
        if checkpoint is None:
            self.say("No complete checkpoint to resume from; starting fresh.")
            return None
        state = load_loop_state(checkpoint, self.accelerator.process_index, self.accelerator.num_processes)
        try:
            self.accelerator.load_state(str(checkpoint))
        except RuntimeError as err:
            if "loading state_dict" not in str(err):
                raise
            raise RuntimeError(
                f"{checkpoint} holds another model than this command builds: resume with the options that wrote it "
                "(--model_name_or_path, --lora_rank, --lora_mlp, --freeze_encoder).\n" + str(err)[:1000]
            ) from err
        self.step, self.epoch = state["step"], state["epoch"]
        self.skipped_steps, self.too_long = state["skipped_steps"], state["too_long"]
        self.pass_start_step = state.get("pass_start_step", 0)
        self.train_counts.counts = Counter(state.get("train_counts", {}))
        self.saved_step = self.step
        self.say(f"Resumed from {checkpoint} at step {self.step}, epoch {self.epoch}.")
        return state["dataloader"]

    def fit(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        loader_state = self.resume() if cfg.resume_from_checkpoint else None
        rng_after_load = capture_rng() if loader_state is not None else None
        if cfg.eval_before_training and self.step == 0:
            self.before_training = self.evaluate_and_log("validation", cfg.max_eval_samples)
        bar = tqdm(total=self.max_steps, initial=self.step, desc="train", disable=not acc.is_local_main_process)
        tally = {"loss": 0.0, "steps": 0, "samples": 0, "start": time.perf_counter(), "grad_norm": float("nan")}
        while self.step < self.max_steps and self.epoch < self.max_passes:
            set_epoch(self.train_loader, self.epoch)
            if loader_state is not None:
                self.train_loader.load_state_dict(loader_state)
                loader_state = None
            # Creating the iterator and fetching from it consume RNG; on resume, put the saved state back after.
            restore = (lambda state=rng_after_load: restore_rng(state)) if rng_after_load is not None else None
            rng_after_load = None
            batches = self.train_counts.counted(self.train_loader)  # every batch fetched, before any filler
            batches = ranked_batches(acc, batches, after_first_fetch=restore)
            for window in accumulation_windows(batches, cfg.gradient_accumulation_steps):
                self.count_trained(window)
                with explain_out_of_memory(cfg):
                    loss, grad_norm, stepped = training_step(
                        acc, self.model, self.optimizer, self.scheduler, window, cfg.max_grad_norm, self.model_inputs
                    )
                self.step += 1
                self.skipped_steps += not stepped
                tally["loss"] += loss
                tally["steps"] += 1
                tally["samples"] += sum(len(batch["id"]) * weight for batch, weight in window)
                tally["grad_norm"] = grad_norm
                bar.update(1)
                self.on_step_end(tally)
                if self.step >= self.max_steps and self.step - self.pass_start_step < self.planned_pass_steps:
                    break  # mid-pass; at a pass's end, let the loader finish it, so that the pass is counted
            else:
                self.end_of_pass()
                self.epoch += 1
        if self.step < self.max_steps and self.step != self.saved_step:  # the last pass ended early: it is the end
            if tally["steps"]:
                self.log_window(tally)
            self.save_checkpoint()
        bar.close()
        if cfg.trained_ids_dir:
            self.write_trained_ids(Path(cfg.trained_ids_dir))

    def end_of_pass(self) -> None:
        line, counts = self.train_counts.line(f"train pass {self.epoch + 1}", self.accelerator)
        steps, self.pass_start_step = self.step - self.pass_start_step, self.step
        self.say(f"{line} | {steps} optimizer steps of {self.planned_pass_steps} planned")
        self.data_counts["train"] = dict(counts)

    def count_trained(self, window: list[tuple[dict, float]]) -> None:
        for batch, weight in window:
            if weight:  # a filler batch repeats one already counted
                self.too_long += batch["num_too_long"]
                if self.cfg.trained_ids_dir:
                    self.trained_ids.setdefault(self.epoch, []).extend(batch["id"])

    def write_trained_ids(self, folder: Path) -> None:
        """rank{N}.json: the ids this rank trained on, per epoch, and a sha256 of the weights it ended with.

        For debugging sharding and resumption: every id once per epoch across ranks, identical digests on all ranks.
        """
        digest = hashlib.sha256()
        for name, tensor in sorted(self.accelerator.unwrap_model(self.model).state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        folder.mkdir(parents=True, exist_ok=True)
        record = {"rank": self.accelerator.process_index, "ids": self.trained_ids, "params_sha256": digest.hexdigest()}
        (folder / f"rank{self.accelerator.process_index}.json").write_text(json.dumps(record))

    def on_step_end(self, tally: dict) -> None:
        cfg, last_step = self.cfg, self.step == self.max_steps
        if self.step % cfg.log_every == 0 or last_step:
            self.log_window(tally)
        if cfg.eval_every and self.step % cfg.eval_every == 0 and not last_step:
            self.evaluate_and_log("validation", cfg.max_eval_samples)
        if (cfg.save_every and self.step % cfg.save_every == 0) or last_step:
            self.save_checkpoint()

    def log_window(self, tally: dict) -> None:
        acc = self.accelerator
        elapsed = time.perf_counter() - tally["start"]
        totals = acc.reduce(
            torch.tensor([float(tally["loss"]), tally["steps"], tally["samples"]], device=acc.device), reduction="sum"
        )
        loss_sum, steps, samples = totals.tolist()
        values = {
            "loss": loss_sum / max(steps, 1),  # each rank's step loss is its share x num_processes: the mean is exact
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": float(tally["grad_norm"]),
            "samples_per_s": samples / elapsed,
            "epoch": self.epoch,
            "skipped_steps": self.skipped_steps,
        }
        self.say(
            f"step {self.step} | loss {values['loss']:.4f} | lr {values['lr']:.3g} | grad_norm "
            f"{values['grad_norm']:.3g} | {values['samples_per_s']:.1f} samples/s | skipped {self.skipped_steps}"
        )
        acc.log(values, step=self.step)
        tally.update(loss=0.0, steps=0, samples=0, start=time.perf_counter())

    def evaluate_and_log(self, split: str, max_samples: int | None = None) -> dict[str, float]:
        result = evaluate_split(
            self.accelerator,
            self.model,
            split,
            self.splits[split],
            self.loader(split),
            self.processor,
            self.model_inputs,
            settings=self.generation,
            max_samples=max_samples,
        )
        metrics = result.metrics
        self.say(f"eval {split} @ step {self.step} | {format_scores(metrics)} | {metrics['num_scored']} utterances")
        self.accelerator.log({f"{split}/{k}": v for k, v in metrics.items()}, step=self.step)
        if result.counts is not None:  # a whole pass: say what it kept
            self.say(result.kept_line)
            self.data_counts[split] = dict(result.counts)
        return metrics | {"records": result.records}

    def save_checkpoint(self) -> None:
        loop_state = {
            "step": self.step,
            "epoch": self.epoch,
            "skipped_steps": self.skipped_steps,
            "too_long": self.too_long,
            "train_counts": dict(self.train_counts.counts),
            "pass_start_step": self.pass_start_step,
            "dataloader": self.train_loader.state_dict(),
        }
        path = save_checkpoint(
            self.accelerator, self.output_dir / "checkpoints", self.step, loop_state, self.cfg.save_total_limit
        )
        self.saved_step = self.step
        self.say(f"saved checkpoint {path}")

    def finish(self) -> None:
        """Save the model locally first (LoRA adapters merged in), then evaluate every held-out split, then publish:
        predictions, metrics, export, card (and push)."""
        acc, cfg = self.accelerator, self.cfg
        acc.wait_for_everyone()
        if cfg.lora_rank:
            # On every rank, before the evaluations below: the card then scores the model that is saved and pushed,
            # a plain Whisper. In place, so self.model (DDP's wrapper too) runs the merged weights from here on.
            model, state_dict = merge_lora(acc.unwrap_model(self.model, keep_torch_compile=False)), None
        else:
            # Collective: under FSDP each rank holds a shard, and only gathered weights make a loadable model (rank
            # 0 receives them). Elsewhere it is the bare model's state dict.
            model, state_dict = acc.unwrap_model(self.model), acc.get_state_dict(self.model)
        # A full disk on rank 0 must stop every rank here, not leave them waiting in the evaluation's collectives.
        save = partial(save_final_model, model, state_dict, self.processor, self.output_dir)
        on_every_rank(acc, save, main_only=True)
        splits = [split for split in ["validation", *cfg.final_eval_splits] if split in self.splits]
        results = {split: self.evaluate_and_log(split) for split in splits}
        if self.before_training is not None:
            before, after = self.before_training, results["validation"]
            self.say(
                f"validation CER before training {before['cer']:.4f} ({before['num_scored']} utterances) -> after "
                f"{after['cer']:.4f} ({after['num_scored']}); space-free {before['cer_nospace']:.4f} -> "
                f"{after['cer_nospace']:.4f}"
            )
        # Rank 0 alone from here: if it fails (a full disk, the Hub), the other ranks stop with it, not at a barrier.
        on_every_rank(acc, partial(self.publish, results), main_only=True)

    def publish(self, results: dict) -> None:
        """Predictions, metrics.json, the faster-whisper export, the card and the push; rank 0 only."""
        cfg = self.cfg
        for split, result in results.items():
            write_predictions(self.output_dir / f"predictions_{split}.jsonl", result.pop("records"))
        summary = {"step": self.step, "skipped_steps": self.skipped_steps, "labels_too_long": self.too_long}
        summary["data"] = self.data_counts  # kept N of M, by reason, for each split's last whole pass
        (self.output_dir / "metrics.json").write_text(json.dumps(results | {"train": summary}, indent=2))
        if cfg.export_ct2:  # before the card and the push, so that both include it
            self.say(f"faster-whisper model: {export_ct2(self.output_dir, None, cfg.export_ct2, overwrite=True)}")
        write_model_card(
            self.output_dir,
            hub_model_id=cfg.hub_model_id,
            base_model=cfg.model_name_or_path,
            # num_scored too: the card must know when eval_clean / eval_other were only partly scored
            metrics={
                split: {metric.name: m[metric.name] for metric in METRICS} | {"num_scored": m["num_scored"]}
                for split, m in results.items()
            },
            hyperparameters=dataclasses.asdict(cfg),
            scoring_normalization=SCORING_NORMALIZATION,
            dataset_config=cfg.dataset_config,
            split_scheme=cfg.split_scheme,
        )
        if cfg.push_to_hub:
            self.say(f"pushed: {push_output_dir(self.output_dir, cfg.hub_model_id, private=cfg.hub_private)}")


@contextlib.contextmanager
def explain_out_of_memory(cfg: TrainConfig):
    try:
        yield
    except torch.OutOfMemoryError as err:
        raise torch.OutOfMemoryError(
            f"{err}\nOut of GPU memory at --per_device_batch_size {cfg.per_device_batch_size} with "
            f"--gradient_checkpointing {cfg.gradient_checkpointing}. Halve the batch and double "
            "--gradient_accumulation_steps (same effective batch), or turn gradient checkpointing on. Without "
            "checkpointing, large-v3 needs ~2.3-3 GB of activations per sample beside ~28 GB of weights, gradients "
            "and AdamW state; `python benchmarks/train_throughput.py --model large-v3` finds what fits."
        ) from err


def capture_rng() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    # Our own progress at INFO; libraries speak only when it matters.
    for name in ("train_accelerate", "kspon_whisper", "kspon_dataset"):
        logging.getLogger(name).setLevel(logging.INFO)
    if cfg.push_only:
        check_full_model(cfg.output_dir)
        print(f"pushed: {push_output_dir(cfg.output_dir, cfg.hub_model_id, private=cfg.hub_private)}")
        return
    accelerator = make_accelerator(cfg)
    if cfg.push_to_hub and accelerator.is_main_process:
        accelerator.print(f"Hub: logged in as {check_hub_access(cfg.hub_model_id)}, will push to {cfg.hub_model_id}")
    if torch.cuda.is_available() and not cfg.sdpa_cudnn:
        torch.backends.cuda.enable_cudnn_sdp(False)
    set_seed(cfg.seed)  # before anything random is built: model init, data order, dropout
    trainer = Trainer(cfg, accelerator)
    hparams = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_HYPERPARAMETERS}  # no local paths
    accelerator.init_trackers("kspon-whisper", config=_scalars(hparams))
    trainer.describe()
    trainer.fit()
    trainer.finish()
    model = weakref.ref(trainer.model)
    del trainer  # the last strong reference to the model outside accelerate: see `end_distributed`
    end_distributed(accelerator, model)


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    return Accelerator(  # no gradient_accumulation_steps: `training_step` accumulates itself (see there)
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_config=ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=f"{cfg.output_dir}/logs"),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=cfg.ddp_timeout))],
    )


def end_distributed(accelerator: Accelerator, model: weakref.ref) -> None:
    """Free the model, then destroy the process group, in this order, so that the process always exits.

    DDP's C++ Reducer holds the process group. If it is the last owner (accelerate's `end_training` has dropped the
    others), freeing the model destroys a gloo group with the GIL held, and the group's destructor joins its worker
    threads, one of which may still be freeing the last collective's tensors and waits for the GIL: a deadlock at
    interpreter exit (measured: 1 run in 20 on 2 CPU cores, benchmarks/RESULTS.md). Freed first, the Reducer only
    lets go; the group then dies through its Python handle, whose destructor releases the GIL.
    """
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # accelerate's own references to the prepared model and optimizer
    gc.collect()  # DDP sits in reference cycles; collect it now, not at some later collection or at exit
    if accelerator.num_processes > 1 and model() is not None:
        logger.warning("The model is still referenced at exit: destroying the process group may deadlock.")
    accelerator.end_training()  # trackers, then torch.distributed.destroy_process_group()


def _scalars(values: dict) -> dict:
    """Tracker configs (tensorboard hparams) take only scalars."""
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in values.items()}


if __name__ == "__main__":
    main(sys.argv[1:])
