"""`text`: a CPU-bound row engine — word statistics and a hash of `payload["text"]`.

The demo submits some payloads with `"fail": true` (or without text) to show a row failing alone.
`"rounds": n` repeats the hashing, to make each row cost more CPU in the benchmarks.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from typing import Any

WORD = re.compile(r"\w+")
TOP_WORDS = 5
MAX_ROUNDS = 1_000_000


def text_stats(payload: dict[str, Any]) -> dict[str, Any]:
    """Word and character counts, the most common words, and a SHA-256 of the text."""
    if payload.get("fail"):
        raise ValueError("the payload asks to fail ('fail' is true)")
    text = payload.get("text")
    if not isinstance(text, str):
        raise ValueError(f"the payload needs a 'text' string, got {type(text).__name__}")
    rounds = payload.get("rounds", 1)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or not 1 <= rounds <= MAX_ROUNDS:
        raise ValueError(f"'rounds' must be an integer from 1 to {MAX_ROUNDS}, got {rounds!r}")
    words = [word.lower() for word in WORD.findall(text)]
    counts = Counter(words)
    digest = text.encode("utf-8", "backslashreplace")
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return {
        "characters": len(text),
        "words": len(words),
        "unique_words": len(counts),
        "mean_word_length": round(sum(map(len, words)) / len(words), 3) if words else 0.0,
        "top_words": [[word, n] for word, n in counts.most_common(TOP_WORDS)],
        "sha256": digest.hex(),
    }
