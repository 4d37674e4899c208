"""The KsponSpeech loading script, importable as a package: `from kspon_dataset import KsponSpeech`."""

from .kspon_dataset import KsponSpeech, KsponSpeechConfig

__all__ = ["KsponSpeech", "KsponSpeechConfig"]
