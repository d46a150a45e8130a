"""`tinyseek update key|make|push` (docs/updates.md)."""
from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import numpy as np

from ..quant.model import QuantModel
from .image import UpdateError
from .package import KEY_BYTES, make_package, read_header, read_key

DEFAULT_KEY = Path("build/update/device.key")


def run_folder(text: str, models_dir: str | Path = "models") -> Path:
    """A run given by name (models/<name>) or folder; it must hold an int8 model."""
    p = Path(text)
    folder = p if p.is_dir() else Path(models_dir) / text
    if not (folder / "int8" / "model.json").is_file():
        raise UpdateError(f"{text}: no int8 model in {folder / 'int8'}; name a run in {models_dir}/ or a run folder "
                          "that `tinyseek quantize` has written")
    return folder


def make_key(out: str | Path) -> Path:
    out = Path(out)
    if out.exists():
        raise UpdateError(f"{out} exists: a device key is not overwritten (devices provisioned with it would refuse "
                          "every later package); remove it yourself if you mean to")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(secrets.token_bytes(KEY_BYTES))
    out.chmod(0o600)
    return out


def kernel_of(env: str) -> str:
    """The kernel variant an update-enabled environment's firmware runs (what its packages carry)."""
    from .device import KERNEL
    if env not in KERNEL:
        raise UpdateError(f"{env} is not an update-enabled environment; those are {', '.join(KERNEL)}")
    return KERNEL[env]


def make(from_run: str, to_run: str, out: str | Path, *, key: str | Path | None = None, version: int | None = None,
         kernel: str = "dsp", full: bool = False, models_dir: str | Path = "models") -> dict:
    a, b = run_folder(from_run, models_dir), run_folder(to_run, models_dir)
    key_path = Path(key) if key else DEFAULT_KEY
    if key is None and not key_path.exists():
        make_key(key_path)
        print(f"made a device key in {key_path} (provision devices with it; pass --key to use another)")
    version = int(time.time()) if version is None else version  # later packages get larger numbers
    old, new = QuantModel.load(a / "int8"), QuantModel.load(b / "int8")
    pkg = make_package(old, new, read_key(key_path), version=version, kernel=kernel, full=full)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(pkg)
    return {"package": str(out), "bytes": len(pkg), "version": version, "from": old.model_hash(),
            "to": new.model_hash(), "kernel": kernel, "full": full}


def push(env: str, package: str | Path, run, *, key: str | Path | None = None, from_run: str = "intents",
         port: str | None = None, limit: int = 0, region: str | Path | None = None) -> dict:
    """Send `package` to the board of `env` and run the test split of `run` (the package's
    model) there, every logit checked against that model's integer reference.

    Emulated boards (device.REGIONS: qemu_m4_ota, qemu_m7_ota, qemu_m55_ota, qemu_rv32_ota,
    qemu_m0_ota) boot the update-enabled firmware built with `from_run`'s model on a region file
    (default build/update/<env>.region, provisioned with the key when new), so one push after
    another updates the same board; on qemu_m0_ota that file is the key record alone and the
    region is the chip's flash, which ends with the QEMU process: every push starts from the
    factory model. A real board (`port`) was provisioned when it was flashed."""
    from ..data.dataset import stratified_first, take
    from ..harness.bench import _send, build_firmware, check_port
    from ..harness.boards import load_profile
    from ..harness.evaluate import int8_inputs, labeled_accuracy, oracle_logits
    from ..harness.protocol import DutClient
    from ..harness.serial_link import SerialLink
    from . import device

    profile = load_profile(env)
    check_port(profile, port)
    pkg = Path(package).read_bytes()
    header = read_header(pkg)
    model = QuantModel.load(run.int8_dir)
    if model.model_hash() != header.model_hash:
        raise UpdateError(f"{package} carries model {header.model_hash}, the run {run.dir} holds {model.model_hash()}: "
                          "push it with the run it was made for (--to)")
    test = run.dataset.test
    n = len(test.y) if not limit else min(limit, len(test.y))
    test = take(test, stratified_first(test.y, n))
    board = None
    if profile.emulated:
        device.region_file(env)  # an emulated board without a region: say so before building
        int8_dir = (run_folder(from_run) / "int8").resolve()
        base = QuantModel.load(int8_dir)
        lib = (Path("firmware/lib") / base.name).resolve()
        saved = os.environ.get("TINYSEEK_INT8_DIR")
        os.environ["TINYSEEK_INT8_DIR"] = str(int8_dir)  # the model the firmware starts with (ota_build.py)
        try:
            elf = build_firmware(env, str(lib), build_dir=Path(".pio/update") / base.name)
        finally:
            if saved is None:
                del os.environ["TINYSEEK_INT8_DIR"]
            else:
                os.environ["TINYSEEK_INT8_DIR"] = saved
        region = Path(region or f"build/update/{env}.region")
        if not region.exists():
            region.parent.mkdir(parents=True, exist_ok=True)
            device.provision(region, read_key(key or DEFAULT_KEY), env=env)
        board = device.OtaBoard(elf, profile.machine(), region, env=env)
        dut = board.power_on()
    else:
        link = SerialLink(port)
        dut = DutClient(link, timeout=60.0)
        dut.sync()
    try:
        before = device.running(dut)
        device.send(dut, pkg)
        after = device.running(dut)
        if after.hash != header.model_hash:
            raise UpdateError(f"after the commit the device runs {after.hash}, not the package's {header.model_hash}")
        if board is not None:  # a power cycle: the device boots the new model from its slot
            dut = board.power_on()
            after = device.running(dut)
        info = dut.info()
        logits = np.asarray([_send(dut, x, info, 1, 0, 60.0, model.subwords)[0]["logits"]
                             for x in int8_inputs(model, test)], dtype=np.int64)
    finally:
        if board is not None:
            board.power_off()
        else:
            link.close()
    expected = oracle_logits(model, test).astype(np.int64)
    mismatches = int(np.sum(np.any(logits != expected, axis=1)))
    return {"env": env, "before": vars(before), "after": vars(after), "package_bytes": len(pkg),
            "samples": n, "mismatches": mismatches, "bitexact": mismatches == 0 and n > 0,
            "accuracy": labeled_accuracy(logits.argmax(axis=1), test.y)}
