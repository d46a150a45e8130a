"""A wake word gating spoken commands, as the device runs it (firmware/lib/harness/ts_listen.c),
in integers: the integer reference the C listener is checked against, event for event.

One front end runs on the stream. Its frames go into a ring of the last `window` frames; every
`stride` frames the wake-word model reads that window afresh (reset, window / k steps), and
when its margin logits[1] - logits[0] reaches `threshold` at `confirm` checks in a row the
listener reports a wake. The
command model then hears the next `capture` frames (from a reset, k frames to a step) and its
logits are reported as the command. No wake is checked for max(rest, capture) frames after a
wake. The detector is the window classifier of TFLite Micro's micro_speech, re-run on a
sliding window; a wake needs `confirm` checks in a row at or over the threshold (posterior
smoothing: one loud check alone wakes nothing). The spec is in docs/audio.md ("Wake word and
commands on the device").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..audio.data import stack_frames
from ..audio.frontend import features
from ..quant.model import QuantModel
from ..quant.reference import InputError, infer_sequences

INT32 = (-2**31, 2**31 - 1)


class ListenError(InputError):
    """A wake-word model, command model or listener setting the listener cannot run."""


@dataclass(frozen=True)
class ListenConfig:
    """Frames are the front end's (one per hop, 20 ms by default)."""
    threshold: int = 0   # wake when the wake model's logits[1] - logits[0] >= threshold
    window: int = 50     # frames the wake model reads (1 s)
    stride: int = 10     # frames between wake checks (200 ms)
    rest: int = 50       # frames after a wake with no check
    capture: int = 150   # frames the command model hears after a wake (3 s); 0: no command
    confirm: int = 1     # checks in a row at or over the threshold that make a wake

    @classmethod
    def of(cls, wake: QuantModel, capture: int = 150) -> "ListenConfig":
        """The settings a wake model was measured with (its audio["wake"], as `tinyseek build`
        records them and the firmware takes as its defaults), else the defaults above."""
        return cls(**(wake.audio or {}).get("wake", {}), capture=capture)  # a wake word saved without "confirm": 1

    def check(self, wake: QuantModel, command: QuantModel | None) -> None:
        """ListenError naming the problem unless the two models and these settings fit together."""
        if wake.audio is None:
            raise ListenError(f"the wake-word model '{wake.name}' takes feature vectors, not audio: quantize it "
                              "with its front end (QuantModel.audio)")
        if wake.num_classes != 2:
            raise ListenError(f"the wake-word model '{wake.name}' has {wake.num_classes} classes; the listener reads "
                              "two (0: other, 1: the wake word)")
        if command is not None:
            if command.audio is None:
                raise ListenError(f"the command model '{command.name}' takes feature vectors, not audio")
            if command.audio["frontend"] != wake.audio["frontend"]:
                raise ListenError(f"'{wake.name}' and '{command.name}' were trained on different front ends "
                                  f"({wake.audio['frontend']} vs {command.audio['frontend']}); one front end "
                                  "feeds both, so train them on the same one")
        k = wake.audio["frames_per_step"]
        for field in ("window", "stride", "rest", "capture"):
            if not 0 <= getattr(self, field) <= 65535:
                raise ListenError(f"{field}={getattr(self, field)} is not a frame count from 0 to 65535")
        if not 1 <= self.confirm <= 255:
            raise ListenError(f"confirm={self.confirm} is not a count of checks from 1 to 255")
        if not INT32[0] <= self.threshold <= INT32[1]:
            raise ListenError(f"threshold={self.threshold} does not fit in int32")
        if self.window < k or self.window % k:
            raise ListenError(f"window={self.window} must be a positive multiple of the wake model's "
                              f"{k} frames a step")
        if self.stride < 1:
            raise ListenError("stride must be at least 1 frame")
        if command is None and self.capture:
            raise ListenError(f"capture={self.capture} needs a command model; set capture=0 for a wake word alone")
        if command is not None and 0 < self.capture < command.audio["frames_per_step"]:
            raise ListenError(f"capture={self.capture} is shorter than one step of the command model "
                              f"({command.audio['frames_per_step']} frames)")


def wake_checks(frames: int, cfg: ListenConfig) -> np.ndarray:
    """The frame counts at which a wake check may run: window, window + stride, ..."""
    return np.arange(cfg.window, frames + 1, cfg.stride)


def wake_margins(wake: QuantModel, feats: np.ndarray, at: np.ndarray, window: int, batch: int = 2048) -> np.ndarray:
    """int64 logits[1] - logits[0] of the wake model on the `window` frames before each count in `at`."""
    k = wake.audio["frames_per_step"]
    out = [np.zeros(0, np.int64)]
    for i in range(0, len(at), batch):
        x = stack_frames(np.stack([feats[a - window:a] for a in at[i:i + batch]]), k)
        logits = infer_sequences(wake, x).astype(np.int64)
        out.append(logits[:, 1] - logits[:, 0])
    return np.concatenate(out)


def wakes(at: np.ndarray, margins: np.ndarray, cfg: ListenConfig) -> list[int]:
    """Indices into `at` (wake_checks) of the checks that wake: the `confirm`-th check in a row
    with margin >= threshold, counted from max(rest, capture) frames after the last wake (no
    check runs before: the count starts again)."""
    quiet = max(cfg.rest, cfg.capture)
    out, until, run = [], 0, 0
    for i, (a, margin) in enumerate(zip(at.tolist(), np.asarray(margins).tolist())):
        if a < until:
            continue
        run = run + 1 if margin >= cfg.threshold else 0
        if run >= cfg.confirm:
            out.append(i)
            until, run = a + quiet, 0
    return out


def listen_frames(wake: QuantModel, command: QuantModel | None, feats: np.ndarray, cfg: ListenConfig,
                  margins: np.ndarray | None = None) -> list[dict]:
    """The events on int8 front-end frames [N, channels], in order: {"event": "wake", "frame",
    "margin"} and {"event": "command", "frame", "class", "logits"}; "frame" counts the frames heard
    when it happened. `margins`: wake_margins at every wake_checks count, when already known."""
    cfg.check(wake, command)
    feats = np.asarray(feats, np.int8)
    at = wake_checks(len(feats), cfg)
    m = wake_margins(wake, feats, at, cfg.window) if margins is None else np.asarray(margins, np.int64)
    if m.shape != at.shape:
        raise ListenError(f"{m.size} margins for {at.size} wake checks: pass wake_margins at wake_checks(frames, cfg)")
    events, captures = [], []
    for i in wakes(at, m, cfg):
        a = int(at[i])
        events.append({"event": "wake", "frame": a, "margin": int(m[i])})
        if cfg.capture and a + cfg.capture <= len(feats):
            captures.append((len(events), a))
    if captures:
        k = command.audio["frames_per_step"]
        x = stack_frames(np.stack([feats[a:a + cfg.capture] for _, a in captures]), k)
        logits = infer_sequences(command, x)
        for (index, a), z in zip(reversed(captures), logits[::-1]):  # from the back: indices stay valid
            events.insert(index, {"event": "command", "frame": a + cfg.capture, "class": int(np.argmax(z)),
                                  "logits": z.tolist()})
    return events


def listen(wake: QuantModel, command: QuantModel | None, pcm, cfg: ListenConfig) -> list[dict]:
    """listen_frames on the frames of int16 samples (a trailing part hop makes no frame)."""
    cfg.check(wake, command)
    return listen_frames(wake, command, features(np.asarray(pcm, np.int16), wake.frontend), cfg)


EVENT_FIELDS = ("event", "frame", "margin", "class", "logits")


def event_mismatches(device: list[dict], reference: list[dict]) -> int:
    """Events of the device that differ from the reference's in any field (event, frame,
    margin, class, logits; a device's extra fields such as its label are not compared), plus
    the difference in count."""
    def fields(e: dict) -> dict:
        return {k: (list(map(int, e[k])) if k == "logits" else e[k]) for k in EVENT_FIELDS if k in e}
    return sum(fields(d) != fields(r) for d, r in zip(device, reference)) + abs(len(device) - len(reference))

