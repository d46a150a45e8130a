"""SpecAugment of the audio student's training batches (distill.spec_*): what it changes in a
batch, that it is seeded, and that validation never sees it."""
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from tinyseek.config import ConfigError, load
from tinyseek.data.dataset import Dataset, Split
from tinyseek.distill import train as tr
from tinyseek.distill.train import audio_augment, make_spec, spec_augment, train_student


def _batch(b=6, steps=5, k=4, c=10):
    # Every value distinct and far from 0, so a masked (0) value and a moved frame show.
    return torch.arange(1, b * steps * k * c + 1, dtype=torch.float32).reshape(b, steps, k * c)


def test_time_and_frequency_masks_set_whole_frames_and_channels_to_the_mean():
    x = _batch()
    gen = torch.Generator().manual_seed(3)
    y = spec_augment(x, 4, gen, time_masks=2, time_frames=6, freq_masks=2, freq_channels=3)
    assert y.shape == x.shape and not torch.equal(y, x)
    assert torch.equal(x, _batch())  # the input is left alone
    f, fx = y.reshape(6, 20, 10), x.reshape(6, 20, 10)
    zero = f == 0
    for i in range(6):
        frames = zero[i].all(dim=1)    # masked in time: every channel of the frame
        channels = zero[i].all(dim=0)  # masked in frequency: the channel in every frame (all k of each step)
        assert torch.equal(zero[i], frames[:, None] | channels[None, :])
        assert frames.sum() <= 12 and channels.sum() <= 6
        assert torch.equal(f[i][~zero[i]], fx[i][~zero[i]])  # the rest unchanged
    assert zero.any()


def test_masks_of_raw_features_take_each_features_mean():
    x = _batch(b=2, steps=3, k=2, c=4)
    fill = torch.arange(100, 108, dtype=torch.float32)  # a mean per step feature (2 frames of 4)
    y = spec_augment(x, 2, torch.Generator().manual_seed(1), freq_masks=1, freq_channels=4, fill=fill)
    f, fx = y.reshape(2, 6, 4), x.reshape(2, 6, 4)
    means = fill.reshape(2, 4).repeat(3, 1)
    changed = f != fx
    assert changed.any() and torch.equal(f[changed], means.expand_as(f)[changed])


def test_the_shift_moves_frames_and_repeats_the_edge_frame():
    x = _batch()
    y = spec_augment(x, 4, torch.Generator().manual_seed(0), shift_frames=3)
    f, fx = y.reshape(6, 20, 10), x.reshape(6, 20, 10)
    shifts = set()
    for i in range(6):
        s = [s for s in range(-3, 4) if torch.equal(f[i], fx[i][(torch.arange(20) - s).clamp(0, 19)])]
        assert len(s) == 1
        shifts.add(s[0])
    assert len(shifts) > 1  # drawn per sample


def test_seeded_and_off_at_zero():
    x = _batch()
    settings = dict(shift_frames=2, time_masks=2, time_frames=5, freq_masks=2, freq_channels=3)
    a = spec_augment(x, 4, torch.Generator().manual_seed(7), **settings)
    b = spec_augment(x, 4, torch.Generator().manual_seed(7), **settings)
    c = spec_augment(x, 4, torch.Generator().manual_seed(8), **settings)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(spec_augment(x, 4, torch.Generator().manual_seed(7)), x)
    with pytest.raises(tr.DistillError, match="does not hold 3 frames"):
        spec_augment(x, 3, torch.Generator())


def _dataset(n=24, steps=3, k=2, c=4):
    rng = np.random.default_rng(0)
    def split(m):
        y = np.arange(m) % 2
        x = rng.normal(0, 1, (m, steps, k * c)).astype(np.float32) + y[:, None, None]
        return Split(y=y, texts=None, x=x)
    return Dataset(name="a", kind="sequence", labels=["a", "b"], train=split(n), val=split(10), test=split(10))


def test_audio_tasks_only_and_training_batches_only(tmp_path, monkeypatch, one_torch_thread):
    ds = _dataset()
    aug = {"distill.spec_time_masks": 1, "distill.spec_time_frames": 2, "distill.spec_freq_masks": 1,
           "distill.spec_freq_channels": 1, "distill.spec_shift_frames": 1}
    audio = load(overrides={"task.kind": "audio", "task.frames_per_step": 2, **aug})
    spec = make_spec(ds, audio)
    assert audio_augment(audio, spec) == {"frames_per_step": 2, "shift_frames": 1, "time_masks": 1, "time_frames": 2,
                                          "freq_masks": 1, "freq_channels": 1}
    assert audio_augment(load(overrides={"task.kind": "npz", "task.train": "w.npz", **aug}), spec) is None  # sensor windows: not spectra
    off = {k: 0 for k in aug}
    assert audio_augment(load(overrides={"task.kind": "audio", **off}), spec) is None

    seen = []
    real = tr.spec_augment
    monkeypatch.setattr(tr, "spec_augment", lambda x, **kw: seen.append(x.shape[0]) or real(x, **kw))
    knowledge = tmp_path / "k.safetensors"
    save_file({"train.logits": np.zeros((24, 2), np.float32)}, str(knowledge))
    base = {"task.kind": "audio", "task.frames_per_step": 2, "student.hidden": 4, "distill.epochs": 2,
            "distill.noise_copies": 0, "distill.schedule": "joint", "distill.alpha": 0.0, "distill.beta": 0.0,
            "distill.batch_size": 8}
    cfg = load(overrides={**base, **aug})
    first = train_student(ds, knowledge, cfg, progress=False, cell_weight=0.0)
    assert seen == [8, 8, 8] * 2  # every training batch of both epochs, never the 10 validation samples
    again = train_student(ds, knowledge, cfg, progress=False, cell_weight=0.0)
    assert first.summary["epochs"] == again.summary["epochs"]  # seeded
    seen.clear()
    train_student(ds, knowledge, load(overrides={**base, **off}), progress=False, cell_weight=0.0)
    assert seen == []


def test_audio_students_train_on_shifted_clips_by_default():
    """The default chosen on the built-in spoken commands' validation voices (docs/audio.md,
    "SpecAugment"): shifts of up to 32 frames, no masks; nothing for other tasks."""
    spec = make_spec(_dataset(k=4, c=40), load(None))
    assert audio_augment(load(overrides={"task.kind": "audio"}), spec) == {
        "frames_per_step": 4, "shift_frames": 32, "time_masks": 0, "time_frames": 0, "freq_masks": 0,
        "freq_channels": 0}
    assert audio_augment(load(None), spec) is None


def test_negative_settings_are_refused():
    with pytest.raises(ConfigError, match="spec_time_masks"):
        load(overrides={"distill.spec_time_masks": -1})
