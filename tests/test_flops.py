"""The analytic FLOP count against torch's own counter on a real forward + backward."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import WhisperForConditionalGeneration

from kspon_whisper.flops import whisper_forward_flops, whisper_training_flops
from kspon_whisper.random_whisper import whisper_config


@pytest.mark.parametrize("label_tokens", [12, 45])
def test_training_flops_match_torch_flop_counter(label_tokens):
    config = whisper_config("test", d_model=64, encoder_ffn_dim=256, decoder_ffn_dim=256)
    # Eager attention: torch's counter has no formula for the CPU SDPA kernel, so QKᵀ and AV must be plain matmuls.
    model = WhisperForConditionalGeneration._from_config(config, attn_implementation="eager")
    features = torch.randn(2, config.num_mel_bins, 3000)
    labels = torch.randint(0, 50000, (2, label_tokens))
    with FlopCounterMode(display=False) as counter:
        model(input_features=features, labels=labels).loss.backward()
    measured = counter.get_total_flops() / 2  # per sample
    assert whisper_training_flops(config, label_tokens, gradient_checkpointing=False) == pytest.approx(
        measured, rel=0.01
    )


def test_gradient_checkpointing_adds_one_forward_of_the_layers():
    config = whisper_config("large-v3")
    plain = whisper_training_flops(config, 45, gradient_checkpointing=False)
    checkpointed = whisper_training_flops(config, 45, gradient_checkpointing=True)
    assert checkpointed - plain == whisper_forward_flops(config, 45)["layers"]
    assert 1.30 < checkpointed / plain < 1.34  # the layers are nearly all of the work
