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

Several machines (identical corpus copies, one shared --output_dir; both checked at start-up):
`sbatch examples/slurm/train_2x8.sbatch --max_steps 20000` (README "Several machines").

Kill it at any time and continue exactly where it was: `--resume_from_checkpoint latest` (checkpoints are written
atomically to OUTPUT_DIR/checkpoints every --save_every steps). Re-push a finished run: `--push_only`.
The Hub token comes from `HF_TOKEN` or `hf auth login`, never from the command line.

CPU demo on the embedded sample corpus (README command 1): `make demo`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gc
import hashlib
import itertools
import json
import logging
import math
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, ProjectConfiguration, set_seed
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import WhisperForConditionalGeneration, WhisperProcessor, get_scheduler

from kspon_whisper.agreement import check_machines_agree
from kspon_whisper.checkpoints import (
    LoopState,
    capture_rng,
    check_full_model,
    load_loop_state,
    on_rank_zero,
    resolve_checkpoint,
    restore_rng,
    save_checkpoint,
    save_final_model,
)
from kspon_whisper.config import TrainConfig, check_splits, parse_options
from kspon_whisper.data import (
    DeviceInputs,
    MixedSplit,
    PassCounter,
    batches_per_pass,
    load_splits,
    make_dataloader,
    set_epoch,
    speech_batcher,
)
from kspon_whisper.evaluation import evaluate_split, print_line, write_predictions
from kspon_whisper.export import export_ct2
from kspon_whisper.extra_data import load_speech_sets
from kspon_whisper.hub import check_hub_access, push_output_dir
from kspon_whisper.inference import GenerationSettings, set_korean_transcription
from kspon_whisper.lora import add_lora, merge_lora, parameter_line
from kspon_whisper.metrics import METRICS, SCORING_NORMALIZATION, format_scores
from kspon_whisper.model_card import NOT_HYPERPARAMETERS, write_model_card
from kspon_whisper.timestamps import timestamp_labels

logger = logging.getLogger("train_accelerate")


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The run's TrainConfig from the command line and an optional --config file; --help opens with the runbook."""
    return parse_options(argv, runbook=__doc__)


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
    device_inputs: Callable[[dict], dict] = dict,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One optimizer step on a window of (batch, weight) micro-batches; returns (loss, grad_norm, stepped).

    The objective is the summed token loss of the window on every rank over the number of those tokens, so that
    4 x 2 accumulation is the batch of 8 even when label lengths differ (the model's loss is a per-micro-batch
    mean). `weight` is 0 for the filler batch of a rank whose data ran out first (`batches_until_all_ranks_done`).
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
            loss = model(**device_inputs(batch)).loss * (num_tokens * scale)
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

    Every rank gets the same number of micro-batches per epoch (`batches_until_all_ranks_done`), so windows agree.
    """
    window = []
    for item in batches:
        window.append(item)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def batches_until_all_ranks_done(accelerator: Accelerator, batches: Iterable[dict]) -> Iterator[tuple[dict, float]]:
    """Yield (batch, weight) until every rank has run out of data, with no example seen twice.

    Ranks read different shards, so one can run out first. It then repeats its last batch with weight 0 so the
    gradient all-reduce stays in step (unequal shards would otherwise hang), and the epoch ends when all are done.
    Batches whose every row had too-long labels are folded into the next batch's `num_labels_too_long`.
    """
    last, labels_too_long, iterator = None, 0, iter(batches)
    while True:
        batch = next(iterator, None)
        while batch is not None and not batch["id"]:
            labels_too_long += batch["num_labels_too_long"]
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
        batch["num_labels_too_long"] += labels_too_long
        labels_too_long, last = 0, batch
        yield batch, 1.0


class Trainer:
    """Holds what the loop shares; `fit` is the loop, `state` where it stands (what a checkpoint restores)."""

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
        self.device_inputs = DeviceInputs(self.processor, accelerator.device)
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
                cfg.data_dir, form=cfg.dataset_config, split_scheme=cfg.split_scheme, streaming=cfg.streaming
            )
            other_sets = load_speech_sets(cfg.eval_sets(), "--eval_datasets")
            train_sets = load_speech_sets(cfg.train_sets(), "--train_datasets")
        check_splits(cfg, self.splits)
        if train_sets:  # interleaved by weight, KsponSpeech read once a pass (data.MixedSplit)
            self.splits["train"] = MixedSplit(self.splits["train"], train_sets, cfg.train_weights(), cfg.seed)
        self.splits |= other_sets
        self.eval_splits = ["validation", *other_sets]  # scored at every evaluation
        self.train_loader = self.loader("train", shuffle=True)
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
        self.state = LoopState()
        self.before_training: dict | None = None  # split -> metrics of the untouched model, when asked for
        self.trained_ids: dict[int, list[str]] = {}  # epoch -> ids of real batches, kept only with trained_ids_dir

    def say(self, message: str) -> None:
        """One line on the main process, above the progress bar."""
        if self.accelerator.is_main_process:
            print_line(message)

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
        # `batches_until_all_ranks_done`); every rank must agree on max_steps, or the schedules differ and the last
        # reduce hangs.
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

    def resume(self) -> LoopState | None:
        """Load the checkpoint --resume_from_checkpoint names; its loop state becomes `self.state` and is returned."""
        # Verifying reads every byte of a checkpoint: rank 0 does it, and every rank resumes from what it found.
        resolve = partial(resolve_checkpoint, self.cfg.resume_from_checkpoint, self.output_dir / "checkpoints")
        checkpoint = on_rank_zero(self.accelerator, resolve)
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
        if state.rng is None:  # a format-1 checkpoint's random state is accelerate's alone, which load_state restored
            state.rng = capture_rng()
        self.state = state
        self.say(f"Resumed from {checkpoint} at step {state.step}, epoch {state.epoch}.")
        return state

    def fit(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        resumed = self.resume() if cfg.resume_from_checkpoint else None
        state = self.state
        if cfg.eval_before_training and state.step == 0:
            self.before_training = self.evaluate_all(self.eval_splits, cfg.max_eval_samples)
        bar = tqdm(total=self.max_steps, initial=state.step, desc="train", disable=not acc.is_local_main_process)
        tally = {"loss": 0.0, "steps": 0, "samples": 0, "start": time.perf_counter(), "grad_norm": float("nan")}
        while state.step < self.max_steps and state.epoch < self.max_passes:
            batches = self.pass_batches(resumed)
            resumed = None
            for window in accumulation_windows(batches, cfg.gradient_accumulation_steps):
                self.count_trained(window)
                with explain_out_of_memory(cfg):
                    loss, grad_norm, stepped = training_step(
                        acc, self.model, self.optimizer, self.scheduler, window, cfg.max_grad_norm, self.device_inputs
                    )
                state.step += 1
                state.skipped_steps += not stepped
                tally["loss"] += loss
                tally["steps"] += 1
                tally["samples"] += sum(len(batch["id"]) * weight for batch, weight in window)
                tally["grad_norm"] = grad_norm
                bar.update(1)
                last_step = state.step == self.max_steps
                if state.step % cfg.log_every == 0 or last_step:
                    self.log_window(tally)
                if cfg.eval_every and state.step % cfg.eval_every == 0 and not last_step:
                    self.evaluate_all(self.eval_splits, cfg.max_eval_samples)
                if (cfg.save_every and state.step % cfg.save_every == 0) or last_step:
                    self.save_checkpoint()
                if last_step and state.step - state.pass_start_step < self.planned_pass_steps:
                    break  # mid-pass; at a pass's end, let the loader finish it, so that the pass is counted
            else:
                self.end_of_pass()
                state.epoch += 1
        if state.step < self.max_steps and state.step != state.saved_step:  # the last pass ended early: it is the end
            if tally["steps"]:
                self.log_window(tally)
            self.save_checkpoint()
        bar.close()
        if cfg.trained_ids_dir:
            self.write_trained_ids(Path(cfg.trained_ids_dir))

    def pass_batches(self, resumed: LoopState | None) -> Iterator[tuple[dict, float]]:
        """This rank's (batch, weight) micro-batches of the current pass, counted into the loop state as they are
        fetched; after a resume, from the checkpoint's data position and random state."""
        set_epoch(self.train_loader, self.state.epoch)
        if resumed is not None:
            self.train_loader.load_state_dict(resumed.data_position)
        fetched = PassCounter(self.splits["train"], self.state.train_counts).counted(self.train_loader)
        first = next(fetched, None)
        if resumed is not None:  # starting the loader and fetching from it consumed random numbers: put them back
            restore_rng(resumed.rng)
        batches = itertools.chain([] if first is None else [first], fetched)
        return batches_until_all_ranks_done(self.accelerator, batches)

    def end_of_pass(self) -> None:
        state = self.state
        counter = PassCounter(self.splits["train"], state.train_counts)
        line, counts = counter.line(f"train pass {state.epoch + 1}", self.accelerator)
        steps, state.pass_start_step = state.step - state.pass_start_step, state.step
        self.say("\n".join([f"{line} | {steps} optimizer steps of {self.planned_pass_steps} planned",
                             *counter.source_lines(counts)]))  # fmt: skip
        self.data_counts["train"] = dict(counts)

    def count_trained(self, window: list[tuple[dict, float]]) -> None:
        for batch, weight in window:
            if weight:  # a filler batch repeats one already counted
                self.state.labels_too_long += batch["num_labels_too_long"]
                if self.cfg.trained_ids_dir:
                    self.trained_ids.setdefault(self.state.epoch, []).extend(batch["id"])

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
            "epoch": self.state.epoch,
            "skipped_steps": self.state.skipped_steps,
        }
        self.say(
            f"step {self.state.step} | loss {values['loss']:.4f} | lr {values['lr']:.3g} | grad_norm "
            f"{values['grad_norm']:.3g} | {values['samples_per_s']:.1f} samples/s | skipped {values['skipped_steps']}"
        )
        acc.log(values, step=self.state.step)
        tally.update(loss=0.0, steps=0, samples=0, start=time.perf_counter())

    def evaluate_and_log(self, split: str, max_samples: int | None = None) -> dict[str, float]:
        result = evaluate_split(
            self.accelerator,
            self.model,
            split,
            self.splits[split],
            self.loader(split),
            self.processor,
            self.device_inputs,
            settings=self.generation,
            max_samples=max_samples,
        )
        metrics, step = result.metrics, self.state.step
        self.say(f"eval {split} @ step {step} | {format_scores(metrics)} | {metrics['num_scored']} utterances")
        self.accelerator.log({f"{split}/{k}": v for k, v in metrics.items()}, step=step)
        if result.counts is not None:  # a whole pass: say what it kept
            self.say(result.kept_line)
            self.data_counts[split] = dict(result.counts)
        return metrics | {"records": result.records}

    def evaluate_all(self, splits: list[str], max_samples: int | None = None) -> dict[str, dict]:
        return {split: self.evaluate_and_log(split, max_samples) for split in splits if split in self.splits}

    def save_checkpoint(self) -> None:
        self.state.saved_step = self.state.step
        state = dataclasses.replace(self.state, data_position=self.train_loader.state_dict(), rng=capture_rng())
        path = save_checkpoint(self.accelerator, self.output_dir / "checkpoints", state, self.cfg.save_total_limit)
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
        on_rank_zero(acc, save)
        results = self.evaluate_all(["validation", *cfg.final_eval_splits, *self.eval_splits[1:]])
        if self.before_training is not None:
            before, after = self.before_training["validation"], results["validation"]
            self.say(
                f"validation CER before training {before['cer']:.4f} ({before['num_scored']} utterances) -> after "
                f"{after['cer']:.4f} ({after['num_scored']}); space-free {before['cer_nospace']:.4f} -> "
                f"{after['cer_nospace']:.4f}"
            )
        # Rank 0 alone from here: if it fails (a full disk, the Hub), the other ranks stop with it, not at a barrier.
        on_rank_zero(acc, partial(self.publish, results))

    def publish(self, results: dict) -> None:
        """Predictions, metrics.json, the faster-whisper export, the card and the push; rank 0 only."""
        cfg = self.cfg
        for split, result in results.items():
            write_predictions(self.output_dir / f"predictions_{split}.jsonl", result.pop("records"))
        state = self.state
        summary = {"step": state.step, "skipped_steps": state.skipped_steps, "labels_too_long": state.labels_too_long}
        summary["data"] = self.data_counts  # kept N of M, by reason, for each split's last whole pass
        before = {
            split: {k: v for k, v in m.items() if k != "records"} for split, m in (self.before_training or {}).items()
        }
        extra = {"train": summary} | ({"before_training": before} if before else {})
        (self.output_dir / "metrics.json").write_text(json.dumps(results | extra, indent=2))
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
            other_sets={spec.label: spec for spec in cfg.eval_sets()},
            before_training=before,
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
    check_machines_agree(accelerator, cfg.data_dir, cfg.output_dir)  # same corpus copies, one shared output folder
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
