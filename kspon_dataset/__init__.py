"""The KsponSpeech loading script, importable as a package on any datasets release.

from kspon_dataset import load_kspon
splits = load_kspon("/data/KsponSpeech", "spelling", split_scheme="random")
"""

from .kspon_dataset import KsponSpeech, KsponSpeechConfig, load_kspon

__all__ = ["KsponSpeech", "KsponSpeechConfig", "load_kspon"]
