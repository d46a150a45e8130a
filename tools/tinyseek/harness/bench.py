"""Build the firmware for one environment, run a model on the device, collect what it measured.

`run_device_bench(env, lib_name, inputs)` is the entry point (the CLI calls it): PlatformIO
build, QEMU (emulated environments) or flash + serial port (real boards), one inference per
input, and plain dicts back: logits, latency in the board's timer unit, memory from the ELF and
from the device.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .boards import BoardProfile, load_profile
from .elfmem import memory_report
from .pio_offline import ensure_scons_package
from .protocol import DutClient
from .qemu import QemuProcess, ToolMissingError
from .serial_link import SerialLink

PROJECT_DIR = Path(__file__).resolve().parents[3]
DEFAULT_INPUT_STEPS = 128  # TINYSEEK_INPUT_STEPS of a sequence model's firmware


class BuildError(ValueError):
    """PlatformIO could not build (or flash) the firmware."""


def pio_executable() -> str:
    """`pio` next to this Python (the venv), else on PATH."""
    local = Path(sys.executable).with_name("pio")
    if local.is_file():
        return str(local)
    found = shutil.which("pio") or shutil.which("platformio")
    if not found:
        raise ToolMissingError("PlatformIO is not installed; install it with: .venv/bin/pip install platformio scons")
    return found


def own_platform_environ(project_dir: str | Path, env: str) -> dict[str, str]:
    """PLATFORMIO_PLATFORMS_DIR for an environment on the project's own platform (symlink://): a
    folder of this checkout, since PlatformIO's shared core folder holds one link to one checkout
    and two checkouts building at once would re-point it under each other. Environments on
    registry platforms keep the shared folder. Empty when the user set the variable."""
    if "PLATFORMIO_PLATFORMS_DIR" in os.environ:
        return {}
    from platformio.project.config import ProjectConfig  # PlatformIO's own reading: `extends` resolved

    config = ProjectConfig(str(Path(project_dir) / "platformio.ini"))
    if env in config.envs() and config.get(f"env:{env}", "platform").startswith("symlink://"):
        return {"PLATFORMIO_PLATFORMS_DIR": str(Path(project_dir).resolve() / ".pio" / "platforms")}
    return {}


def _model_environ(lib: str | Path, wake: str | Path | None = None) -> tuple[str, dict[str, str]]:
    """(model name, environment variables that make the build link it). `lib` is a library
    name in firmware/lib or the path of a library folder; `wake` the same for a wake-word model
    beside it (the firmware's listener)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TINYSEEK_MODEL", "TINYSEEK_MODEL_DIR", "TINYSEEK_WAKE_MODEL", "TINYSEEK_WAKE_MODEL_DIR")}
    names = []
    for var, item in (("TINYSEEK_MODEL", lib), ("TINYSEEK_WAKE_MODEL", wake)):
        if item is None:
            continue
        if isinstance(item, Path) or os.sep in item:
            env[var + "_DIR"] = str(Path(item).resolve())
            names.append(Path(item).resolve().name)
        else:
            env[var] = item
            names.append(item)
    return names[0], env


def build_firmware(env: str, lib: str | Path, *, project_dir: str | Path = PROJECT_DIR,
                   build_dir: str | Path | None = None, extra_flags: Sequence[str] = (),
                   upload_port: str | None = None, timeout: float = 600.0, wake: str | Path | None = None) -> Path:
    """`pio run -e env` for model `lib` (and a wake-word model `wake` beside it; with `-t upload`
    when upload_port is given); returns the ELF. Each model builds in its own folder, so
    switching models recompiles nothing."""
    project_dir = Path(project_dir)
    ensure_scons_package(project_dir)
    name, environ = _model_environ(lib, wake)
    if wake is not None:
        name += "+" + Path(wake).name
    build_dir = Path(build_dir) if build_dir else project_dir / ".pio" / "models" / name
    environ["PLATFORMIO_BUILD_DIR"] = str(build_dir)
    environ.update(own_platform_environ(project_dir, env))
    # PlatformIO's usage telemetry is its only network access in an offline build.
    environ.setdefault("PLATFORMIO_SETTING_ENABLE_TELEMETRY", "no")
    if extra_flags:
        environ["PLATFORMIO_BUILD_FLAGS"] = " ".join(extra_flags)
    cmd = [pio_executable(), "run", "-d", str(project_dir), "-e", env]
    if upload_port:  # "auto": let PlatformIO find the board
        cmd += ["-t", "upload"] + (["--upload-port", upload_port] if upload_port != "auto" else [])
    try:
        p = subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"`{' '.join(cmd)}` did not finish within {timeout:.0f} s") from e
    if p.returncode != 0:
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-25:])
        raise BuildError(f"`{' '.join(cmd)}` failed (exit {p.returncode}):\n{tail}")
    elf = build_dir / env / "firmware.elf"
    if not elf.is_file():
        raise BuildError(f"the build reported success but {elf} does not exist")
    return elf


def check_port(profile: BoardProfile, port: str | None) -> None:
    """A real board needs its port; an emulated one takes the port of the QEMU it starts."""
    if not profile.emulated and not port:
        raise ValueError(f"{profile.env} is a real board: pass its serial port (--port /dev/ttyUSB0) to flash and "
                         "talk to it")
    if profile.emulated and port:
        raise ValueError(f"{profile.env} is an emulated board: its serial port is the one of the QEMU the harness "
                         f"starts, so the port {port} would be ignored; leave --port out, or name a real board's "
                         "environment (e.g. nucleo_f446re)")


def _send(dut: DutClient, item, info: dict, runs: int, warmups: int, timeout: float,
          subwords: int = 0) -> tuple[dict, str]:
    """One input -> (result, how it was sent). A text the command line cannot carry (too long,
    or with '%', CR or LF) is tokenized on the host by the same tokenizer and sent as ids (with
    subwords, whole groups of subwords + 1 ids, 0 in unused slots, as the device's tokenizer
    writes them)."""
    kind = info["kind"]
    if kind == "audio":
        return _stream_audio(dut, np.asarray(item), info), "audio"
    if kind == "text" and isinstance(item, str):
        if len(item.encode()) <= info["line"] - 4 and not any(c in item for c in "%\r\n"):
            return dut.classify(item), "text"
        from ..student.tokenizer import HashTokenizer, device_ids
        item = device_ids(HashTokenizer(info["vocab"], info["max_len"], subwords).model_inputs(item), subwords)
        if not item:  # nothing but separators: the same as classifying an empty text
            return dut.classify(""), "text"
    data = (np.asarray(item, "<u2") if kind == "text" else np.asarray(item, np.int8)).tobytes()
    if not data:
        raise ValueError("an empty input cannot be loaded (the protocol needs db load N > 0)")
    dut.load(data)
    return dut.infer(runs, warmups, timeout=timeout), "token_ids" if kind == "text" else "features"


def _check_pcm(pcm: np.ndarray, rule: str) -> None:
    """ValueError `rule`, and what pcm is, unless it is a non-empty 1-D int16 array."""
    if pcm.dtype != np.int16 or pcm.ndim != 1 or not len(pcm):
        raise ValueError(f"{rule}, not {pcm.dtype} {pcm.shape}")


def _load_chunks(dut: DutClient, pcm: np.ndarray, info: dict):
    """Loads the int16 samples into the device's buffer a chunk at a time (a chunk fills it:
    one hop of the front end by default), as a microphone's DMA would hand them over; yields
    after each, for the command that consumes it."""
    per_chunk = info["buffer"] // 2
    line_bytes = max(2, (info["line"] - 4) // 2)  # `db HEX` must fit the device's command line
    for i in range(0, len(pcm), per_chunk):
        dut.load(pcm[i:i + per_chunk].astype("<i2").tobytes(), chunk=line_bytes)
        yield


def _stream_audio(dut: DutClient, pcm: np.ndarray, info: dict) -> dict:
    """One clip to an audio model as a microphone would give it: reset, then `db` + `stream`
    chunk by chunk (_load_chunks). The result is the logits after the last chunk; its time the
    sum over the clip, and `chunks` each chunk's time: the last one is the latency from the
    clip's last sample to the decision."""
    _check_pcm(pcm, "an audio input is a non-empty 1-D int16 clip")
    dut.reset()
    times = []
    for _ in _load_chunks(dut, pcm, info):
        result = dut.stream()
        times.append(result["time"]["total"])
    result["time"] = {"total": sum(times), "runs": 1, "min": sum(times), "max": sum(times),
                      "unit": result["time"].get("unit")}
    result["chunks"] = times
    result["chunk_samples"] = info["buffer"] // 2
    return result


def _latency(times: list[dict]) -> dict:
    per = [t["total"] / t["runs"] for t in times]
    return {"per_input": per, "mean": float(np.mean(per)), "min": min(t["min"] for t in times),
            "max": max(t["max"] for t in times), "median": float(np.median(per))} if per else {}


def run_device_bench(env: str, lib_name: str | Path, inputs: Sequence, *, runs: int = 1, warmups: int = 0,
                     port: str | None = None, project_dir: str | Path = PROJECT_DIR,
                     build_dir: str | Path | None = None, extra_flags: Sequence[str] = (),
                     timeout: float = 60.0, subwords: int = 0) -> dict:
    """Build `lib_name` for `env`, run every input on the device, and report.
    subwords: the model's student.subwords (how a text tokenized on the host is sent).

    inputs: texts (str, tokenized and classified on the device with `cls`) or token-id lists for
    text models;
    int8 feature arrays [T, F] (or one [N, T, F] array) for sequence models;
    int16 clips [samples] for audio models (streamed chunk by chunk, _stream_audio).
    port: the serial port of a real board (e.g. /dev/ttyUSB0; the board is flashed first);
    emulated environments start QEMU and need none. extra_flags: more compiler flags (e.g.
    -DTINYSEEK_KERNEL_PORTABLE). Returns plain, JSON-ready dicts."""
    profile = load_profile(env)
    check_port(profile, port)
    steps = [np.asarray(x).shape[0] for x in inputs if not isinstance(x, (str, list)) and np.ndim(x) == 2]
    flags = [f"-DTINYSEEK_INPUT_STEPS={max(steps)}"] if steps and max(steps) > DEFAULT_INPUT_STEPS else []
    flags += list(extra_flags)

    elf = build_firmware(env, lib_name, project_dir=project_dir, build_dir=build_dir, extra_flags=flags,
                         upload_port=None if profile.emulated else port)
    name = _model_environ(lib_name)[0]
    memory = memory_report(elf, name, elf.with_name("firmware.map"))
    session = _on_board(profile, elf, port, lambda url: _session(url, inputs, runs, warmups, timeout, subwords))
    return _report(profile, elf, memory, session, runs, warmups)


def _on_board(profile: BoardProfile, elf: Path, port: str | None, session):
    """session(url) on the board: QEMU started for the emulated ones, the serial port otherwise."""
    if profile.emulated:
        with QemuProcess(elf, profile.machine()) as qemu:
            return session(qemu.url)
    return session(port)


def run_device_listen(env: str, lib: str | Path, wake: str | Path, pcm: np.ndarray, cfg, *,
                      port: str | None = None, project_dir: str | Path = PROJECT_DIR,
                      build_dir: str | Path | None = None, extra_flags: Sequence[str] = (),
                      timeout: float = 60.0) -> dict:
    """Build the firmware with the audio (command) model `lib` and the wake-word model `wake`
    beside it, set the listener to `cfg` (tools/tinyseek/audio/listen.py: ListenConfig) and
    stream the int16 samples `pcm` to `listen` chunk by chunk (one hop by default), as a
    microphone would. Returns the events (as audio.listen gives them, with the device's labels),
    each chunk's time, the memory of the image and of both libraries, and the device's reports."""
    pcm = np.asarray(pcm)
    _check_pcm(pcm, "the stream is a non-empty 1-D int16 array")
    profile = load_profile(env)
    check_port(profile, port)
    elf = build_firmware(env, lib, project_dir=project_dir, build_dir=build_dir, extra_flags=list(extra_flags),
                         upload_port=None if profile.emulated else port, wake=wake)
    names = {role: Path(item).name for role, item in (("command", lib), ("wake", wake))}
    memory = {role: memory_report(elf, name, elf.with_name("firmware.map")) for role, name in names.items()}

    def session(url: str) -> dict:
        with SerialLink(url) as link:
            dut = DutClient(link, timeout=timeout)
            dut.sync()
            info = dut.info()
            if info["kind"] != "audio":
                raise ValueError(f"the listener needs an audio command model; {info['model']} is a {info['kind']} model")
            config = dut.listen_config(cfg)
            dut.listen_reset()
            events, chunks = [], []
            for _ in _load_chunks(dut, pcm, info):
                reply = dut.listen()
                events += reply["events"]
                chunks.append({"time": reply["time"]["total"], "events": [e["event"] for e in reply["events"]]})
            return {"info": info, "config": config, "events": events, "chunks": chunks, "frames": reply["frames"],
                    "chunk_samples": info["buffer"] // 2, "device_mem": dut.mem()}

    out = _on_board(profile, elf, port, session)
    info = out["info"]
    return {"env": profile.env, "board": info["board"], "cpu": info["cpu"], "emulated": profile.emulated,
            "elf": str(elf), "unit": info["unit"], "clock_hz": info["clock_hz"], **out,
            "memory": {"elf": memory["command"], "wake_model": memory["wake"]["flash"]["model"],
                       "wake_model_ram": memory["wake"]["ram"]["model"], "device": out["device_mem"]}}


def _session(url: str, inputs: Sequence, runs: int, warmups: int, timeout: float, subwords: int) -> dict:
    with SerialLink(url) as link:
        dut = DutClient(link, timeout=timeout)
        dut.sync()
        info, results, modes = dut.info(), [], []
        for item in inputs:
            result, mode = _send(dut, item, info, runs, warmups, timeout, subwords)
            results.append(result)
            modes.append(mode)
        device_mem = dut.mem()
    return {"info": info, "results": results, "modes": modes, "device_mem": device_mem}


def _report(profile: BoardProfile, elf: Path, memory: dict, session: dict, runs: int, warmups: int) -> dict:
    info, results = session["info"], session["results"]
    latency = _latency([r["time"] for r in results])
    unit = info["unit"]
    note = ("QEMU -icount: instructions executed, not CPU cycles (no pipeline model)"
            if unit == "instructions" else f"{unit} of the {info['timer']} counter")
    energy = None
    if latency:
        energy = {"per_inference_uj": profile.energy_uj(latency["mean"]), "active_power_mw": profile.active_power_mw,
                  "basis": (f"{unit} taken as cycles of {profile.reference_board} at {profile.reference_clock_hz} Hz"
                            if profile.emulated else f"cycles at {profile.clock_hz} Hz"),
                  "note": "an estimate from a datasheet power figure, not a measurement"}
    return {
        "env": profile.env,
        "board": info["board"],
        "cpu": info["cpu"],
        "emulated": profile.emulated,
        "elf": str(elf),
        "model": {"name": info["model"], "hash": info["hash"], "kind": info["kind"], "kernel": info["kernel"]},
        "timer": {"source": info["timer"], "unit": unit, "clock_hz": info["clock_hz"], "note": note,
                  # performance: m-lap-us lines; energy: pulses of the board's timestamp pin
                  "timestamps": info.get("timestamps", "performance")},
        "runs_per_input": runs,
        "warmups": warmups,
        "inputs": len(results),
        "input_modes": sorted(set(session["modes"])),
        "latency": {"unit": unit, **latency},
        "energy": energy,
        "logits": [r["logits"] for r in results],
        "results_text": [r["results_text"] for r in results],
        "predictions": [int(np.argmax(r["logits"])) for r in results],
        "audio_chunks": [r["chunks"] for r in results if "chunks" in r],
        "audio_chunk_samples": next((r["chunk_samples"] for r in results if "chunk_samples" in r), None),
        "memory": {"elf": memory, "device": session["device_mem"],
                   "stack_peak": session["device_mem"].get("stack_peak")},
    }

