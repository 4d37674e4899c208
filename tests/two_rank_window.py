"""One accumulation window through `training_step` on two DDP ranks (gloo), against the same batch in one process.

Launched by tests/test_accumulation.py with `accelerate launch --multi_gpu --num_processes 2`. The ranks hold
different numbers of label tokens, and rank 1's window ends with a weight-0 filler, so only a loss normalised by the
tokens of the whole window on both ranks gives the single-process gradient. Plain SGD with lr 1 shows any scale error.
"""

import copy
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's train_accelerate, not an installed

from accelerate import Accelerator

from train_accelerate import end_distributed, label_tokens, training_step

VOCAB, WIDTH, LENGTH = 11, 8, 9


class TokenModel(torch.nn.Module):
    """Mean cross-entropy over the labels that are not -100, per micro-batch, as Whisper's loss is."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, WIDTH)
        self.out = torch.nn.Linear(WIDTH, VOCAB)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
        logits = self.out(self.embed(tokens))
        return SimpleNamespace(loss=torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()))


def micro_batch(seed: int, rows: int, real_tokens: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (rows, LENGTH), generator=generator)
    labels = torch.randint(0, VOCAB, (rows, LENGTH), generator=generator)
    labels[:, real_tokens:] = -100
    return {"tokens": tokens, "labels": labels}


WINDOWS = {  # rank -> [(batch, weight)]: 18 + 4 label tokens on rank 0; 15 on rank 1, then a filler repeating them
    0: [(micro_batch(0, rows=2, real_tokens=9), 1.0), (micro_batch(1, rows=2, real_tokens=2), 1.0)],
    1: [(micro_batch(2, rows=3, real_tokens=5), 1.0), (micro_batch(2, rows=3, real_tokens=5), 0.0)],
}


def single_process_step(model: torch.nn.Module) -> None:
    """SGD, lr 1, on every real micro-batch of both ranks as one batch: summed token loss over the token count."""
    batches = [batch for window in WINDOWS.values() for batch, weight in window if weight]
    total = sum(label_tokens(batch) for batch in batches)
    loss = sum(model(**batch).loss * label_tokens(batch) for batch in batches) / total
    loss.backward()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter -= parameter.grad


def main() -> int:
    accelerator = Accelerator()
    assert accelerator.num_processes == 2, f"launch with 2 processes, got {accelerator.num_processes}"
    torch.manual_seed(0)
    model = TokenModel()
    expected = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    window = WINDOWS[accelerator.process_index]
    training_step(accelerator, model, optimizer, scheduler, window, max_grad_norm=float("inf"))
    single_process_step(expected)
    pairs = zip(accelerator.unwrap_model(model).parameters(), expected.parameters(), strict=True)
    worst = max((actual - reference).abs().max().item() for actual, reference in pairs)
    print(f"rank {accelerator.process_index}: largest difference from one process {worst:.3g}", flush=True)
    reference = weakref.ref(model)
    del model, optimizer
    end_distributed(accelerator, reference)
    return 0 if worst < 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
