"""The audio student: a TinyLSTM over the front end's frames, quantized with the input scale
fixed at the front end's, so the int8 model takes the C front end's output unchanged."""
import numpy as np
import pytest
from safetensors.numpy import save_file

from tinyseek.audio.data import FEATURE_SCALE, feature_dataset
from tinyseek.audio.frontend import features
from tinyseek.audio.synth import SpokenSplit
from tinyseek.config import load
from tinyseek.distill.train import train_student
from tinyseek.quant.quantize import QuantError, quantize, quantize_run
from tinyseek.quant.reference import infer_sequences, quantize_inputs
from tinyseek.student.tinylstm import save_student


def _tones(n, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    t = np.arange(8000) / 16000
    audio = np.stack([np.round(rng.uniform(2000, 12000) * np.sin(2 * np.pi * (400 if c else 2500) * t)
                               + rng.normal(0, 200, len(t))).astype(np.int16) for c in y])
    return SpokenSplit(audio, y.astype(np.int64), ["low" if c else "high" for c in y], ["tone"] * n)


def test_int8_audio_student_reads_the_front_end_output_unchanged(tmp_path, one_torch_thread):
    splits = {"train": _tones(16, 0), "val": _tones(6, 1), "test": _tones(6, 2)}
    ds = feature_dataset(["high", "low"], splits)
    knowledge = tmp_path / "knowledge.safetensors"  # soft labels of a teacher that is sure and right
    save_file({f"{s}.logits": np.where(np.eye(2)[getattr(ds, s).y] > 0, 4.0, -4.0).astype(np.float32)
               for s in ("train", "val", "test")}, str(knowledge))
    cfg = load(overrides={"student.hidden": 8, "distill.epochs": 3, "distill.noise_copies": 0,
                          "distill.schedule": "joint", "distill.beta": 0.0})
    result = train_student(ds, knowledge, cfg, progress=False)
    folder = save_student(result.model, result.spec, tmp_path / "student")
    qm = quantize(folder, ds.train.x, name="tones", input_scale=FEATURE_SCALE)
    assert qm.input_scale == FEATURE_SCALE
    for s, split in splits.items():
        frames = np.stack([features(a) for a in split.audio])
        assert np.array_equal(quantize_inputs(qm, getattr(ds, s).x), frames)
    assert infer_sequences(qm, frames).shape == (6, 2)
    save_student(result.model, result.spec, tmp_path / "run" / "student")  # the quantize stage of an audio task
    with pytest.raises(QuantError, match="reads 40 features a step, not task.frames_per_step = 4 frames of 40"):
        quantize_run(load(overrides={"task.kind": "audio"}), tmp_path / "run", ds)
    staged = quantize_run(load(overrides={"task.kind": "audio", "task.frames_per_step": 1}), tmp_path / "run", ds)
    assert staged.input_scale == FEATURE_SCALE and staged.audio["frames_per_step"] == 1
    with pytest.raises(QuantError, match="input_scale must be > 0"):
        quantize(folder, ds.train.x, name="tones", input_scale=0.0)


def _manifest(tmp_path, with_text: bool):
    """Two spoken labels as tones (a low and a high one), with or without transcripts."""
    import json
    import wave
    rows = []
    for k in range(40):
        path = tmp_path / "clips" / f"{k}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(_tones(2, k).audio[k % 2][:4800].tobytes())  # label k % 2: high, low
        rows.append({"audio": f"clips/{k}.wav", "label": ["high", "low"][k % 2]}
                    | ({"text": ["it is high", "it is low"][k % 2]} if with_text else {}))
    m = tmp_path / "train.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return m


@pytest.mark.parametrize("with_text", [True, False])
def test_the_teacher_reads_the_transcripts_and_the_student_the_audio(tmp_path, with_text):
    """Cross-modal distillation in `tinyseek build`: with a transcript for every clip the teacher
    adapts on and reads the text, clip for clip; without, it reads the front end's features."""
    import json

    from safetensors.numpy import load_file

    from tinyseek.pipeline import Run
    cfg = load(overrides={"task.kind": "audio", "task.train": str(_manifest(tmp_path, with_text)),
                          "task.clip_seconds": 0.3, "models_dir": str(tmp_path / "models"),
                          "teacher.hidden_size": 32, "teacher.num_layers": 2, "teacher.num_heads": 2,
                          "teacher.pretrain_epochs": 1, "teacher.finetune_epochs": 2, "student.hidden": 8,
                          "distill.epochs": 2, "codegen.out_dir": str(tmp_path / "lib")})
    run = Run(cfg, log=lambda *a: None)
    run.build(until="distill" if not with_text else "report")
    meta = json.loads((run.teacher_dir / "teacher.json").read_text())
    assert meta["kind"] == ("text" if with_text else "sequence")
    knowledge = load_file(str(run.knowledge))
    assert knowledge["train.logits"].shape == (len(run.dataset.train.y), 2)
    assert json.loads((run.student_dir / "student.json").read_text())["kind"] == "sequence"
    if with_text:
        assert run.teacher_dataset.train.texts[0] in ("it is high", "it is low")
        assert np.array_equal(run.teacher_dataset.train.y, run.dataset.train.y)  # clip for clip
    assert (run.teacher_dataset is run.task_dataset) != with_text
    if with_text:  # the int8 model carries its front end; the host check heard the clips' samples
        from tinyseek.quant.model import QuantModel
        assert QuantModel.load(run.int8_dir).audio["frames_per_step"] == cfg.task.frames_per_step
        assert (tmp_path / "lib" / f"{cfg.model_name}_frontend.c").is_file()
        verify = json.loads((run.dir / "verify.json").read_text())
        assert verify["audio"] == {"samples": len(run.dataset.test.y), "bitexact": True, "mismatches": 0}
        assert "through the library's front end" in (run.dir / "report.md").read_text()
