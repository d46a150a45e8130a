"""bench/wakeword.py's stream handling: hours of audio are turned into front-end frames a chunk
at a time, exactly as one pass would, and the detector windows step k frames at a time."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import wakeword  # noqa: E402

from tinyseek.audio.frontend import features  # noqa: E402


def test_chunked_stream_features_equal_one_pass() -> None:
    audio = (np.random.default_rng(0).standard_normal(320 * 2501 + 77) * 2000).astype(np.int16)
    one_pass = features(audio)
    for chunk in (1, 7, 1000, 5000):
        assert np.array_equal(wakeword.stream_features(audio, chunk_hops=chunk), one_pass)


def test_detection_counts_hits_false_accepts_and_rests() -> None:
    at = np.arange(50, 1000, 10)
    margin = np.zeros(len(at), np.int64)
    margin[at == 300] = margin[at == 310] = 9  # one keyword ending at frame 300: the second run rests
    margin[at == 700] = 9                      # no keyword near frame 700: a false accept
    got = wakeword.detect(at, margin, 5, ends=[300, 900], other_seconds=3600)
    assert (got["detected"], got["false_accepts"], got["keywords"], got["false_accepts_per_hour"]) == (1, 1, 2, 1.0)
