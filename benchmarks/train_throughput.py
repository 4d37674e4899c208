"""Training throughput: this project's loop (A) against the blog's Seq2SeqTrainer configuration (B), side by side.

    python benchmarks/train_throughput.py --model large-v3 --write_results          # on a GPU: the real comparison
    python benchmarks/train_throughput.py --model test --steps 4 --warmup 1         # CPU smoke test, seconds
    python benchmarks/train_throughput.py --batch_size 48,32,16 --checkpointed_batch_size 128,96  # largest that fits

A random Whisper on sample clips. A: `train_accelerate.training_step` (fused AdamW, bf16, log-mel on the device); B:
the blog's `Seq2SeqTrainer` (batch 4 x 4, bf16, checkpointing). Samples/s: the median window after warm-up.
"""

import gc
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from transformers import (
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmarks/train_throughput.py`

from benchmarks.harness import RESULTS, arguments, markdown_table, publish, section_head
from kspon_dataset.corpus import SAMPLE_RATE
from kspon_whisper.audio import to_dtype
from kspon_whisper.collator import WhisperCollator
from kspon_whisper.flops import mfu, whisper_training_flops
from kspon_whisper.inference import LANGUAGE, TASK
from kspon_whisper.log_mel import LogMelSpectrogram
from kspon_whisper.random_whisper import whisper_config
from tools.offline_whisper import DEFAULT_OUTPUT_DIR, build_offline_whisper
from tools.sample_audio import sample_clips
from train_accelerate import TrainConfig, configure_model, training_step

SECTION = "## Training throughput"
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, SXM parts
BLOG = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 4}  # and 1 DataLoader worker
CUDA = torch.cuda.is_available()


def make_examples(processor: WhisperProcessor, count: int, seed: int = 0) -> list[dict]:
    """Sample-corpus clips joined until their labels hold 30-60 tokens (KsponSpeech's range), ≤ 30 s of audio."""
    rows = [(samples, text) for text, samples in sample_clips(("train",)).values()]
    rng = np.random.default_rng(seed)
    examples = []
    while len(examples) < count:
        target, audio, text = rng.integers(30, 61), [], []
        while True:
            clip, sentence = rows[rng.integers(len(rows))]
            labels = processor.tokenizer(" ".join([*text, sentence])).input_ids
            if len(labels) > target or sum(map(len, audio)) + len(clip) > 30 * SAMPLE_RATE:
                break
            audio.append(clip)
            text.append(sentence)
        examples.append({"audio": np.concatenate(audio), "labels": processor.tokenizer(" ".join(text)).input_ids})
    return examples


def random_model(name: str, gradient_checkpointing: bool) -> WhisperForConditionalGeneration:
    gc.collect()  # what an out-of-memory attempt left behind must go before the next one allocates
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    # Initialised where it will train: large-v3's 1.5 B random weights take far longer to draw on the host.
    with torch.device("cuda" if CUDA else "cpu"):
        model = WhisperForConditionalGeneration._from_config(whisper_config(name), attn_implementation="sdpa")
    configure_model(model, TrainConfig(data_dir="unused", max_steps=1, gradient_checkpointing=gradient_checkpointing))
    return model


def synchronize() -> None:
    if CUDA:
        torch.cuda.synchronize()


def result(name: str, batch: int, ckpt: bool, rate: float, model, examples: list[dict], note: str = "") -> list:
    peak = next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in device()), None)
    label_tokens = round(statistics.mean(len(e["labels"]) - 1 for e in examples))
    utilisation = mfu(rate, whisper_training_flops(model.config, label_tokens, ckpt), peak) if peak else None
    memory = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if CUDA else "-"
    return [name, batch, ckpt, f"{rate:.2f}", "-" if utilisation is None else f"{utilisation:.1%}", memory, note]


def run_ours(args, batch_size: int, examples, extractor, gradient_checkpointing: bool) -> list:
    accelerator = Accelerator(mixed_precision="bf16" if CUDA else "no")
    model = random_model(args.model, gradient_checkpointing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=accelerator.device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    collator = WhisperCollator(extractor, model.config.decoder_start_token_id, audio_mode="waveform")
    log_mel = LogMelSpectrogram(extractor).to(accelerator.device)
    batches = [collator(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]
    batches = [b for b in batches if len(b["labels"]) == batch_size]
    if CUDA:
        batches = [{k: v.pin_memory() for k, v in b.items() if torch.is_tensor(v)} for b in batches]
    batches = itertools.cycle(batches)

    def step() -> None:
        batch = next(batches)
        features = log_mel(batch["input_audio"].to(accelerator.device, non_blocking=True))
        labels = batch["labels"].to(accelerator.device, non_blocking=True)
        window = [({"input_features": features, "labels": labels}, 1.0)]  # one micro-batch per optimizer step
        training_step(accelerator, model, optimizer, scheduler, window, max_grad_norm=1.0)

    try:
        for _ in range(args.warmup):
            step()
        rates = []
        for _ in range(max(1, args.steps // args.window)):
            synchronize()
            start = time.perf_counter()
            for _ in range(args.window):
                step()
            synchronize()
            rates.append(args.window * batch_size / (time.perf_counter() - start))
    except torch.OutOfMemoryError:
        return ["A: this loop", batch_size, gradient_checkpointing, "nan", "-", "-", "OOM"]
    return result("A: this loop", batch_size, gradient_checkpointing, statistics.median(rates), model, examples)


class _StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        synchronize()
        self.times.append(time.perf_counter())


def run_blog(args, examples, extractor) -> list:
    features = extractor([to_dtype(e["audio"], "float32") for e in examples], sampling_rate=SAMPLE_RATE).input_features
    train_set = [{"input_features": f, "labels": e["labels"]} for f, e in zip(features, examples, strict=True)]
    model, timer = random_model(args.model, gradient_checkpointing=True), _StepTimer()
    with tempfile.TemporaryDirectory() as out:
        options = {"bf16": CUDA, "gradient_checkpointing": True, "learning_rate": 1e-5, "dataloader_num_workers": 1}
        options |= {"save_strategy": "no", "report_to": "none", "disable_tqdm": True}
        training_args = Seq2SeqTrainingArguments(out, **BLOG, **options, max_steps=args.warmup + args.steps)
        trainer = Seq2SeqTrainer(model=model, args=training_args, train_dataset=train_set, data_collator=blog_collator)
        trainer.add_callback(timer)
        trainer.train()
    times, window = timer.times[args.warmup :], args.window
    samples_per_step = BLOG["per_device_train_batch_size"] * BLOG["gradient_accumulation_steps"]
    spans = [times[i + window] - times[i] for i in range(0, len(times) - window, window)]
    window = window if spans else len(times) - 1
    rate = statistics.median(window * samples_per_step / span for span in spans or [times[-1] - times[0]])
    return result("B: blog (Seq2SeqTrainer)", 4, True, rate, model, examples, "x4 acc")


def blog_collator(rows: list[dict]) -> dict:
    """The blog's DataCollatorSpeechSeq2SeqWithPadding: stack features, pad labels with -100, drop a leading SOT."""
    features = torch.tensor(np.stack([r["input_features"] for r in rows]))
    longest = max(len(r["labels"]) for r in rows)
    labels = torch.full((len(rows), longest), -100)
    for i, r in enumerate(rows):
        labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
    if (labels[:, 0] == 50258).all():
        labels = labels[:, 1:]
    return {"input_features": features, "labels": labels}


def device() -> str:
    return f"device {torch.cuda.get_device_name() if CUDA else 'CPU'}"


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__, SECTION)
    parser.add_argument("--model", default="large-v3", help="large-v3, large-v3-turbo, small, tiny or test")
    sizes = lambda text: sorted(map(int, text.split(",")), reverse=True)  # noqa: E731
    parser.add_argument("--batch_size", type=sizes, default=[16], help="A's batch; of a list, the largest that fits")
    parser.add_argument("--checkpointed_batch_size", type=sizes, help="the same, checkpointed (default: the same)")
    parser.add_argument("--gradient_checkpointing", choices=("on", "off", "both"), default="both", help="for A")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (allocator, kernels, workers)")
    parser.add_argument("--window", type=int, default=5, help="steps per timing window; the median window counts")
    parser.add_argument("--configs", default="A,B", help="which configurations to run: A, B or A,B")
    parser.add_argument("--results", type=Path, default=RESULTS, help="write to this file instead")
    args = parser.parse_args(argv)
    checkpointed = args.checkpointed_batch_size or args.batch_size
    processor = WhisperProcessor.from_pretrained(build_offline_whisper(DEFAULT_OUTPUT_DIR))
    processor.tokenizer.set_prefix_tokens(language=LANGUAGE, task=TASK, predict_timestamps=False)
    extractor = WhisperFeatureExtractor(feature_size=whisper_config(args.model).num_mel_bins)
    steps_needed = (args.warmup + args.steps) * max(*args.batch_size, *checkpointed, 16)
    examples = make_examples(processor, min(steps_needed, 256))
    rows = []
    if "B" in args.configs:
        rows.append(run_blog(args, examples, extractor))
    checkpointing = {"on": [True], "off": [False], "both": [False, True]}[args.gradient_checkpointing]
    for ckpt in checkpointing if "A" in args.configs else []:
        for batch_size in checkpointed if ckpt else args.batch_size:
            rows.append(run_ours(args, batch_size, examples, extractor, ckpt))
            if rows[-1][-1] != "OOM":
                break
    lines = [section_head(SECTION, __file__, argv, device=device()).rstrip("\n")]
    header = ["configuration", "batch", "grad. ckpt", "samples/s", "MFU", "peak GPU GiB", "note"]
    lines += [f"- Model `{args.model}`, random weights from its config.", "", markdown_table(header, rows), ""]
    blog = next((float(row[3]) for row in rows if row[0].startswith("B")), None)
    lines += [
        f"- {row[0]}, gradient checkpointing {row[2]}: {float(row[3]) / blog:.1f}x configuration B on this device."
        for row in rows
        if blog and row[0].startswith("A") and row[-1] != "OOM"
    ]
    lines.append("- The blog reported 4.779 samples/s for configuration B on one H100 80GB.")
    publish("\n".join(lines) + "\n", args.write_results, args.results)


if __name__ == "__main__":
    main()
