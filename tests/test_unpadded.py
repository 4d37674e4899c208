"""The experimental cropped encoder input: shapes, and the encoder put back exactly as it was."""

import pytest
import torch
from transformers import WhisperForConditionalGeneration

from kspon_whisper.tiny import whisper_config
from kspon_whisper.unpadded import cropped_frames, encoder_input_frames
from train_accelerate import TrainConfig


def test_cropped_frames_cover_the_longest_clip_in_whole_seconds():
    assert cropped_frames(torch.tensor([16_000, 8_000])) == 100
    assert cropped_frames(torch.tensor([16_001])) == 200
    assert cropped_frames(torch.tensor([100])) == 100
    assert cropped_frames(torch.tensor([40 * 16_000])) == 3000


def test_encoder_trains_on_cropped_input_and_is_restored():
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(whisper_config("test"))
    encoder = model.get_encoder()
    features, labels = torch.randn(2, 80, 300), torch.randint(0, 50000, (2, 9))
    with encoder_input_frames(model, 300):
        out = model(input_features=features, labels=labels)
        out.loss.backward()
        assert out.encoder_last_hidden_state.shape[1] == 150
    assert torch.isfinite(out.loss)
    assert encoder.config.max_source_positions == encoder.embed_positions.num_embeddings == 1500
    # Back to 30 s: the full-length input is accepted again.
    assert model(input_features=torch.randn(1, 80, 3000), labels=labels[:1]).loss.isfinite()


def test_cropping_needs_log_mel_on_the_device():
    with pytest.raises(ValueError, match="--crop_encoder_input needs --log_mel_on_device true"):
        TrainConfig(data_dir="unused", max_steps=1, crop_encoder_input=True, log_mel_on_device=False)
