"""Gradient accumulation is the larger batch: the same weights, whole epochs, one scheduler step per optimizer step.

`b x 2` accumulation and `2b x 1` see the same examples in the same order (map-style, same seed), so with dropout
off they must end with the same weights, up to float rounding. The micro-batch size is chosen so that an epoch has
an odd number of micro-batches: its last window is then partial, and two epochs put it before an epoch boundary.
"""

import math
import re
from collections import Counter
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState, GradientState

import train_accelerate
from kspon_dataset import load_kspon
from tests.processes import run_ok
from tests.test_two_process import ENV, LAUNCH

EPOCHS = 2
LOG_LINE = re.compile(r"^step (\d+) \| loss (\S+) \| lr (\S+) \| grad_norm (\S+) \|", re.MULTILINE)


@pytest.fixture(scope="module")
def train_ids(tone_corpus) -> list[str]:
    return list(load_kspon(str(tone_corpus), "spelling", split_scheme="random")["train"]["id"])


@pytest.fixture
def train(tiny_whisper_dir, tone_corpus, tmp_path, monkeypatch, capsys):
    """Run `train_accelerate.main` as a user would; return its Trainer and the log lines it printed."""
    trainers = []

    class RecordedTrainer(train_accelerate.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    monkeypatch.setattr(train_accelerate, "Trainer", RecordedTrainer)

    def run(batch_size: int, accumulation: int, epochs: int = EPOCHS):
        out = tmp_path / f"{batch_size}x{accumulation}"
        train_accelerate.main(
            ["--model_name_or_path", str(tiny_whisper_dir), "--data_dir", str(tone_corpus), "--output_dir", str(out)]
            + ["--streaming", "false", "--num_epochs", str(epochs), "--per_device_batch_size", str(batch_size)]
            + ["--gradient_accumulation_steps", str(accumulation), "--trained_ids_dir", str(out / "ids")]
            + ["--num_workers", "0", "--learning_rate", "1e-3", "--warmup_steps", "1", "--log_every", "1"]
            + ["--save_every", "0", "--eval_every", "0", "--gradient_checkpointing", "false", "--report_to", "none"]
            + ["--final_eval_splits", "test", "--generation_max_new_tokens", "1"]
        )
        AcceleratorState._reset_state(reset_partial_state=True)  # process-wide singletons: none left for the next run
        GradientState._reset_state()
        return trainers[-1], LOG_LINE.findall(capsys.readouterr().out)

    return run


def micro_batch_size(num_examples: int) -> int:
    """A size giving an odd number of micro-batches per epoch, so that the epoch's last window of 2 is partial."""
    size = next((b for b in (4, 3, 5, 2) if math.ceil(num_examples / b) % 2 == 1), None)
    assert size is not None, f"no micro-batch size gives a partial window with {num_examples} training examples"
    return size


@pytest.mark.slow
def test_accumulating_two_micro_batches_equals_the_double_batch(train, train_ids):
    size = micro_batch_size(len(train_ids))
    accumulated, accumulated_log = train(size, 2)
    double, double_log = train(2 * size, 1)

    steps_per_epoch = math.ceil(len(train_ids) / (2 * size))
    for trainer in (accumulated, double):
        assert trainer.state.step == EPOCHS * steps_per_epoch, "--num_epochs is not whole passes"
        assert trainer.scheduler.last_epoch == trainer.state.step, "the scheduler did not step once per optimizer step"
        assert sorted(trainer.trained_ids) == list(range(EPOCHS))
        for epoch, ids in trainer.trained_ids.items():
            assert Counter(ids) == Counter(train_ids), f"epoch {epoch} is not one pass over the training split"
    assert [line[2] for line in accumulated_log] == [line[2] for line in double_log], "learning rates differ"
    for (step, *accumulated_values), (_, *double_values) in zip(accumulated_log, double_log, strict=True):
        # Printed to 3-4 digits: loss, lr and the norm before clipping tell a mis-scaled loss even where clipping
        # and AdamW would hide it in the weights.
        assert accumulated_values == double_values, f"step {step}: {accumulated_values} != {double_values}"

    expected = double.accelerator.unwrap_model(double.model).state_dict()
    actual = accumulated.accelerator.unwrap_model(accumulated.model).state_dict()
    initial = train_accelerate.WhisperForConditionalGeneration.from_pretrained(accumulated.cfg.model_name_or_path)
    moved = max((expected[name] - tensor).abs().max().item() for name, tensor in initial.state_dict().items())
    assert moved > 1e-3, "training barely moved the weights: the comparison below would prove nothing"
    worst = max(((expected[name] - actual[name]).abs().max().item(), name) for name in expected)
    # Measured: 5e-7 (float rounding, through AdamW); averaging per-micro-batch means instead of tokens gave 3e-3.
    assert worst[0] < 1e-5, f"{worst[1]} differs by {worst[0]:.2e} between {size} x 2 and {2 * size} x 1"


@pytest.mark.slow
def test_two_ranks_normalise_by_the_tokens_of_both():
    """Per-rank token counts, a missing num_processes factor or a counted filler would each change the gradient."""
    script = Path(__file__).with_name("two_rank_window.py")
    result = run_ok([*LAUNCH, str(script)], timeout_s=180, env=ENV)
    for rank in (0, 1):
        assert f"rank {rank}: largest difference from one process" in result.stdout, result.log_tail()
