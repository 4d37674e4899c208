"""Training memory of Whisper large-v3, full fine-tuning against LoRA: arithmetic and counts, no GPU involved.

python benchmarks/lora_memory.py --write_results
"""

import functools
import itertools
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import WhisperForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as `python benchmarks/lora_memory.py`

from benchmarks.harness import arguments, markdown_table, publish, section_head
from kspon_whisper.lora import add_lora
from kspon_whisper.random_whisper import ARCHITECTURES, whisper_config
from train_accelerate import TrainConfig

SECTION = "## LoRA memory (large-v3, arithmetic)"
GiB = 2**30
CARDS_GIB = (24, 48, 80)
HEADROOM = 0.10  # of the card, for the CUDA context, fragmentation and backward's transients (assumed)


@dataclass(frozen=True)
class Setup:
    rank: int  # 0: full fine-tuning
    mlp: bool = False
    dropout: float = TrainConfig.lora_dropout  # the loop's default

    @property
    def name(self) -> str:
        if not self.rank:
            return "full fine-tuning"
        dropout = f", dropout {self.dropout:g}" if self.dropout != TrainConfig.lora_dropout else ""
        return f"LoRA r{self.rank}, attention{' + MLP' if self.mlp else ''}{dropout}"

    def build(self, **overrides) -> torch.nn.Module:
        model = WhisperForConditionalGeneration(whisper_config("large-v3", **overrides))
        model.config.use_cache = False
        return add_lora(model, self.rank, 2 * self.rank, self.dropout, self.mlp) if self.rank else model


HEADER = ["setup", "trainable", "fp32 weights GiB", "fp32 grads GiB", "AdamW GiB", "weights + grads + AdamW GiB"]
HEADER += ["bf16 weight copies GiB, no ckpt / ckpt", "activations GiB per sample, no ckpt / ckpt (est.)"]
SETUPS = [Setup(0)] + [Setup(rank, mlp) for mlp in (False, True) for rank in (8, 16, 32)] + [Setup(16, True, 0.05)]


def parameter_bytes(setup: Setup) -> dict[str, float]:
    with torch.device("meta"):
        model = setup.build()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # fp32 master weights (autocast computes in bf16 from them), fp32 gradients, AdamW's exp_avg and exp_avg_sq
    sizes = {"weights": 4 * total, "gradients": 4 * trainable, "adamw": 8 * trainable}
    return {"total": total, "trainable": trainable, **sizes}


def saved_bytes(setup: Setup, batch: int, label_tokens: int) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """Bytes autograd saves in one forward, by (region, "activations" | "weight copies"), and each layer's input."""
    torch.manual_seed(0)
    model = setup.build(encoder_layers=1, decoder_layers=1).train()
    base = model.get_base_model() if setup.rank else model
    parameter_storage = {p.untyped_storage().data_ptr() for p in model.parameters()}
    bf16_weights = defaultdict(list)  # storage bytes -> bf16 copies of the weights of that size
    for p in model.parameters():
        bf16_weights[2 * p.numel()].append(p.detach().to(torch.bfloat16).reshape(-1))
    region, layer_inputs = ["outside the layers"], {}

    def enter(name, module, args, kwargs):
        region[0] = name
        layer_inputs[name] = (args[0] if args else kwargs["hidden_states"]).nbytes

    for name, layers in (("encoder layer", base.model.encoder.layers), ("decoder layer", base.model.decoder.layers)):
        layer = layers[0]
        layer.register_forward_pre_hook(functools.partial(enter, name), with_kwargs=True)
        layer.register_forward_hook(lambda *_: region.__setitem__(0, "outside the layers"))
    seen, tally, kept = set(), defaultdict(int), []

    def pack(tensor: torch.Tensor) -> None:
        # Kept alive so that no address is reused, but detached: a saved grad_fn would make a C++ cycle, never freed.
        kept.append(tensor.detach())
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen | parameter_storage:
            seen.add(storage.data_ptr())
            tally[region[0], "weight copies" if is_weight_copy(storage) else "activations"] += storage.nbytes()

    def is_weight_copy(storage) -> bool:
        candidates = bf16_weights.get(storage.nbytes(), [])
        flat = torch.empty(0, dtype=torch.bfloat16).set_(storage) if candidates else None
        return any(torch.equal(flat, weight) for weight in candidates)

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(batch, ARCHITECTURES["large-v3"].num_mel_bins, 3000, generator=generator)
    labels = torch.randint(0, 50000, (batch, label_tokens), generator=generator)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_features=features, labels=labels)
    return tally, layer_inputs


def activation_bytes(setup: Setup, label_tokens: int) -> dict[str, float]:
    """Per-sample and per-step saved bytes of the whole 32 + 32-layer model, with and without checkpointing."""
    layers = ARCHITECTURES["large-v3"].encoder_layers  # = decoder layers
    (one, inputs), (two, _) = (saved_bytes(setup, batch, label_tokens) for batch in (1, 2))
    per_sample = Counter({key: two[key] - one[key] for key in one.keys() | two.keys()})  # missing keys count 0
    per_step = Counter({key: one[key] - per_sample[key] for key in per_sample})
    layer_sample = {r: per_sample[r, "activations"] for r in ("encoder layer", "decoder layer")}
    copies = {r: per_step[r, "weight copies"] + per_sample[r, "weight copies"] for r in layer_sample}
    outside = per_sample["outside the layers", "activations"]
    no_checkpointing = layers * sum(layer_sample.values()) + outside
    # Checkpointed: every layer keeps its input; the encoder output is one tensor all decoder layers share (counted
    # in `outside`); in backward one layer at a time is recomputed, holding its saved set and, about as large, the
    # gradients flowing through it.
    checkpointed = layers * sum(inputs.values()) + outside + 2 * max(layer_sample.values())
    all_copies = layers * sum(copies.values()) + per_step["outside the layers", "weight copies"]
    return {
        "per_sample": no_checkpointing,
        "per_sample_checkpointed": checkpointed,
        # autocast caches a bf16 copy of every trainable weight for the forward; frozen ones are cast per use, so with
        # LoRA and checkpointing only the recomputed layer's copies are alive.
        "copies": all_copies,
        "copies_checkpointed": all_copies if not setup.rank else max(copies.values()),
    }


def report(label_tokens: int) -> str:
    rows, fits = [], []
    for setup in SETUPS:
        params, acts = parameter_bytes(setup), activation_bytes(setup, label_tokens)
        static = params["weights"] + params["gradients"] + params["adamw"]
        gib = [f"{params[key] / GiB:.2f}" for key in ("weights", "gradients", "adamw")] + [f"**{static / GiB:.2f}**"]
        trainable = f"{params['trainable'] / 1e6:,.1f}M ({100 * params['trainable'] / params['total']:.2f} %)"
        pairs = [(acts[a] / GiB, acts[f"{a}_checkpointed"] / GiB) for a in ("copies", "per_sample")]
        rows.append([setup.name, trainable, *gib, *(f"{plain:.2f} / {ckpt:.2f}" for plain, ckpt in pairs)])
        fits.append([setup.name])
        for card, c in itertools.product(CARDS_GIB, ("", "_checkpointed")):
            room = card * GiB * (1 - HEADROOM) - static - acts[f"copies{c}"]
            fits[-1].append(max(0, int(room // acts[f"per_sample{c}"])))
    cards = [f"{card} GB{ckpt}" for card in CARDS_GIB for ckpt in ("", " ckpt")]
    free = f"Largest per-device batch by this arithmetic ({HEADROOM:.0%} of the card kept free; ckpt: checkpointed):"
    return "\n".join([markdown_table(HEADER, rows), "", free, "", markdown_table(["setup", *cards], fits)])


def main(argv: list[str] | None = None) -> None:
    parser = arguments(__doc__, SECTION)
    parser.add_argument("--label_tokens", type=int, default=60, help="decoder tokens per sample")
    args = parser.parse_args(argv)
    body = report(args.label_tokens)
    head = section_head(SECTION, __file__, argv, "peft") + f"- {args.label_tokens} label tokens and 30 s of log-mel "
    publish(head + f"per sample; **no GPU**: arithmetic and counts on the CPU.\n\n{body}\n", args.write_results)


if __name__ == "__main__":
    main()
