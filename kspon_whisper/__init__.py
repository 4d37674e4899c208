"""Fine-tuning Whisper on KsponSpeech: the pieces `train_accelerate.py` is built from."""
