"""Hashed draws: a random-looking choice per training example that every rank, worker and resumed run agrees on.

A share of the training examples gets something done to it (a timestamped label, faster-whisper's padding). Drawing
it with `random` inside a DataLoader worker would depend on the worker, the world size and where a run resumed; a
hash of (what, seed, epoch, utterance id) does not, and each epoch draws afresh.
"""

from __future__ import annotations

import hashlib


def drawn(probability: float, *key: object) -> bool:
    """True for a share `probability` of keys: the key's hash, uniform in [0, 2**64), lies below probability x 2**64
    (so 1 always holds and 0 never does)."""
    digest = hashlib.blake2b("/".join(map(str, key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < probability * 2**64
