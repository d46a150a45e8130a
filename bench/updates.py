"""Model updates over the air (docs/updates.md): package sizes between two real runs, transfer
and apply on qemu_m4 in instructions, the RAM an update needs, and power cuts.

    OMP_NUM_THREADS=1 .venv/bin/python bench/updates.py [--cuts 200]

The update is a real retraining step, not a synthetic perturbation: the committed default's
float student (models/intents/student) fine-tuned for one epoch on the training split with the
hard labels (Adam, lr 3e-4, batch 64, seed 0: what one local round of a device or one round of
federated training does), then quantized by `tinyseek quantize`'s code with the default's
calibration settings into the run folder models/intents_ft/ (made once, ignored by git). The
package turns the committed default (factory model of qemu_m4_ota) into that model.

QEMU counts instructions, not cycles: `ota status` reports the SysTick count (-icount: one
instruction per ns) spent inside the update commands and at boot, not the serial line's time.
Writes bench/results/updates.json and the "Model updates" section of bench/RESULTS.md
(`--md-only` rewrites the section from the JSON).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from tinyseek.config import load  # noqa: E402
from tinyseek.pipeline import Run  # noqa: E402
from tinyseek.quant.model import QuantModel  # noqa: E402
from tinyseek.quant.reference import infer_tokens  # noqa: E402
from tinyseek.update.image import slot_image  # noqa: E402
from tinyseek.update.package import make_package  # noqa: E402

FT_RUN = "intents_ft"
KEY = bytes(range(101, 133))


def fine_tuned_run(base: Run) -> Path:
    """models/intents_ft: one epoch of hard-label fine-tuning of the default's student."""
    import torch

    from tinyseek.quant.quantize import quantize_run
    from tinyseek.student.tinylstm import load_student, save_student, split_inputs
    out = ROOT / "models" / FT_RUN
    if (out / "int8" / "model.json").is_file():
        return out
    torch.manual_seed(0)
    model, spec = load_student(base.student_dir)
    ds = base.dataset
    x, lengths = split_inputs(ds.train, spec)
    y = torch.as_tensor(np.asarray(ds.train.y), dtype=torch.long)
    keep = y >= 0
    x, lengths, y = x[keep], lengths[keep], y[keep]
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    model.train()
    order = torch.randperm(len(y))
    for i in range(0, len(y), 64):
        b = order[i:i + 64]
        loss = torch.nn.functional.cross_entropy(model(x[b], lengths[b]), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    save_student(model, spec, out / "student")
    quantize_run(base.cfg, out, ds)
    return out


def accuracy(model: QuantModel, split) -> float:
    from tinyseek.harness.evaluate import labeled_accuracy, oracle_logits
    return labeled_accuracy(oracle_logits(model, split).argmax(axis=1), split.y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuts", type=int, default=200, help="power-cut points (default 200)")
    ap.add_argument("--cuts2", type=int, default=40, help="power-cut points of the second update, A -> B (default 40)")
    ap.add_argument("--kills", type=int, default=20, help="QEMU killed at random instants of a transfer (default 20)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/updates.json"))
    ap.add_argument("--md-only", action="store_true", help="rewrite the RESULTS.md section from --out")
    args = ap.parse_args()
    if args.md_only:
        write_markdown(json.loads(Path(args.out).read_text()), args)
        return

    base = Run(load(None, {}))
    old = QuantModel.load(base.int8_dir)
    t = time.time()
    new = QuantModel.load(fine_tuned_run(base) / "int8")
    print(f"fine-tuned run ready ({time.time() - t:.0f} s)")
    a, b = slot_image(old, "dsp"), slot_image(new, "dsp")
    delta = make_package(old, new, KEY, version=2)
    full = make_package(old, new, KEY, version=2, full=True)
    changed = int(np.sum(np.frombuffer(a.data, np.uint8) != np.frombuffer(b.data, np.uint8)))
    result = {
        "update": "one epoch of hard-label fine-tuning of the default's float student (Adam 3e-4, batch 64), "
                  "re-quantized",
        "models": {"from": old.model_hash(), "to": new.model_hash()},
        "val_accuracy": {"from": accuracy(old, base.dataset.val), "to": accuracy(new, base.dataset.val)},
        "image_bytes": len(a.data), "image_bytes_changed": changed,
        "package_bytes": {"delta": len(delta), "full": len(full), "header": 192},
    }
    print(json.dumps(result, indent=2))
    result["device"] = device_bench(old, new, delta, full, args.cuts, args.cuts2, args.kills)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    write_markdown(result, args)


def write_markdown(r: dict, args) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from results_md import replace_section
    d = r["device"]
    pc, ram, boot = d["power_cuts"], d["ram"], d["boot_instructions"]
    o = pc["outcomes"]
    v = r["val_accuracy"]
    p2, k = d["power_cuts_second_update"], d["sigkill_cuts"]
    o2, ok = p2["outcomes"], k["outcomes"]
    section = f"""## Model updates (`python bench/updates.py --cuts {args.cuts} --cuts2 {args.cuts2} --kills {args.kills}`)

The update: {r["update"]} (`models/intents_ft`, made by the script); int8 validation accuracy
{v["from"]:.4f} -> {v["to"]:.4f}. {r["image_bytes_changed"]:,} of the slot image's {r["image_bytes"]:,} bytes
changed. Board: qemu_m4_ota (QEMU mps2-an386, -icount): instructions, not cycles, counted by the
firmware inside the update commands (the emulated UART's time is not in them).

| what | measured | goal |
|---|---|---|
| delta package (header 192 B + body) | {r["package_bytes"]["delta"]:,} B | < 100 KB (plan), < 20 KB (goal) |
| full package, for comparison | {r["package_bytes"]["full"]:,} B | |
| transfer + apply of the delta on the device ({d["delta"]["chunks"]} chunks) | {d["delta"]["transfer_apply_instructions"]:,} instructions | |
| transfer + apply of the full package ({d["full"]["chunks"]} chunks) | {d["full"]["transfer_apply_instructions"]:,} instructions | |
| boot: factory model / a slot (SHA-256 of the 63 KB image checked) | {boot["factory"]:,} / {boot["slot"]:,} instructions | |
| static RAM: update-enabled firmware vs default qemu_m4 | {ram["static_update_firmware"]:,} B vs {ram["static_default_firmware"]:,} B (+{ram["static_added"]:,} B) | |
| stack peak after boot, an update and inferences vs the default after inferences | {ram["stack_peak_update"]:,} B vs {ram["stack_peak_default"]:,} B | |
| RAM an update needs beyond the running model (static added + extra stack) | {ram["needed_beyond_running_model"]:,} B | <= 2 KiB |
| flash operations of one update (sector erases + word programs) | {pc["flash_ops_per_update"]:,} | |
| power cuts (operation N torn, then the power cut; reboot), factory -> slot A | {pc["points"]} points: old {o["old"]}, new {o["new"]}, mixed {o["mixed"]}, bricked {o["bricked"]} | >= 200 points, 0 mixed or bricked |
| the same, second update slot A -> B (back to the default's weights, version 3) | {p2["points"]} points: old {o2["old"]}, new {o2["new"]}, mixed {o2["mixed"]}, bricked {o2["bricked"]} | 0 mixed or bricked |
| QEMU killed (SIGKILL) at random instants of the delta's transfer | {k["points"]} kills: old {ok["old"]}, new {ok["new"]}, mixed {ok["mixed"]}, bricked {ok["bricked"]} | 0 mixed or bricked |

"old" and "new": after the reboot the running image's SHA-256 (checked by the device at boot) is
the old or the new model's and its logits on two inputs equal that model's integer reference;
"mixed": anything else; "bricked": no answer. The new model runs from the first cut point after
the update's last flash operation (op {pc["first_new_at_op"]}; second update: op {p2["first_new_at_op"]}), when the
boot record's CRC word is whole; every earlier cut leaves the old one. Wall
time of the delta's transfer over QEMU's emulated UART: {d["delta"]["wall_s_emulated_uart"]} s (the emulator's
character rate, not a real link's; measured on the 2-core machine with other jobs running, which
moves wall times, not instruction counts). The SIGKILL cuts fall at random instants up to 1.1x
that time, so the last ones may land after the commit.
"""
    replace_section("## Model updates", section)


IDS = [[5, 17, 300, 2, 9], [1000, 3, 3, 77]]


def _elf_ram(elf: Path) -> int:
    from elftools.elf.elffile import ELFFile
    with elf.open("rb") as f:
        return sum(s["sh_size"] for s in ELFFile(f).iter_sections()
                   if s["sh_flags"] & 2 and s["sh_flags"] & 1 and s.name in (".data", ".bss"))


def device_bench(old, new, delta, full, cuts: int, cuts2: int, kills: int) -> dict:
    import tempfile
    import threading

    from tinyseek.harness.bench import build_firmware
    from tinyseek.harness.boards import load_profile
    from tinyseek.harness.protocol import ProtocolError, parse_kv
    from tinyseek.harness.serial_link import LinkError
    from tinyseek.update import device
    from tinyseek.update.image import UpdateError

    tmp = Path(tempfile.mkdtemp(prefix="ota-bench-"))
    elf = build_firmware("qemu_m4_ota", "intents", build_dir=tmp / "build")
    plain = build_firmware("qemu_m4", "intents", build_dir=tmp / "plain")
    machine = load_profile("qemu_m4").machine()
    template = device.provision(tmp / "template.bin", KEY)
    ref = {name: [infer_tokens(m, [ids])[0].tolist() for ids in IDS] for name, m in (("old", old), ("new", new))}
    images = {slot_image(old, "dsp").sha256.hex(): "old", slot_image(new, "dsp").sha256.hex(): "new"}

    def fresh(name: str) -> Path:
        return Path(shutil.copyfile(template, tmp / name))

    def which(dut, labels: dict) -> tuple[str, dict]:
        """old / new / mixed: the running image's SHA-256 and the logits must both say the same."""
        s = device.status(dut)
        got = []
        for ids in IDS:
            dut.load(np.asarray(ids, "<u2").tobytes())
            got.append(dut.infer()["logits"])
        model = images.get(s["image"])
        if model is None or got != ref[model]:
            return "mixed", s
        return labels[s["image"]], s

    out: dict = {"note": "QEMU mps2-an386 -icount: instructions, not cycles; transfer time is the emulated "
                         "UART's, not a real link's"}
    # RAM: the update-enabled image against the default qemu_m4 image; the stack peak after boot,
    # an update and inferences, against the default's after inferences
    with device.OtaBoard(plain, machine, fresh("plain.bin")) as b:
        dut = b.power_on()
        dut.classify("turn on the lights")
        plain_peak = int(dut.mem()["stack_peak"])
    for kind, pkg in (("delta", delta), ("full", full)):
        with device.OtaBoard(elf, machine, fresh(f"{kind}.bin")) as b:
            dut = b.power_on()
            boot_factory = device.status(dut)
            t = time.time()
            device.send(dut, pkg)
            wall = time.time() - t
            s = device.status(dut)
            outcome, _ = which(dut, images)
            peak = int(dut.mem()["stack_peak"])
            dut = b.power_on()
            boot_slot = device.status(dut)
            assert outcome == "new" and boot_slot["slot"] == "A", (outcome, boot_slot)
        if kind == "delta":
            shutil.copyfile(tmp / "delta.bin", tmp / "after_delta.bin")
        out[kind] = {"package_bytes": len(pkg), "chunks": -(-len(pkg) // device.CHUNK_BYTES),
                     "transfer_apply_instructions": s["work_instructions"], "flash_ops": s["flash_ops"],
                     "wall_s_emulated_uart": round(wall, 2), "stack_peak_after": peak}
    out["boot_instructions"] = {"factory": boot_factory["boot_instructions"], "slot": boot_slot["boot_instructions"]}
    out["ram"] = {"static_update_firmware": _elf_ram(elf), "static_default_firmware": _elf_ram(plain),
                  "static_added": _elf_ram(elf) - _elf_ram(plain), "stack_peak_default": plain_peak,
                  "stack_peak_update": out["delta"]["stack_peak_after"]}
    out["ram"]["needed_beyond_running_model"] = out["ram"]["static_added"] + max(
        0, out["ram"]["stack_peak_update"] - plain_peak)

    # power cuts: flash operation N torn and the power cut, at points spread over the whole
    # update (sector erases, image words, slot header, boot record) plus its last operations
    def special(total: int) -> set[int]:
        return {1, 17, 18, total - 29, total - 5, total - 4, total - 3, total - 1, total, total + 1}

    def cut_run(template: Path, pkg: bytes, points: list[int], labels: dict) -> dict:
        counts = {"old": 0, "new": 0, "mixed": 0, "bricked": 0}
        trials, t = [], time.time()
        for i, point in enumerate(points):
            region = Path(shutil.copyfile(template, tmp / "cut.bin"))
            with device.OtaBoard(elf, machine, region, timeout=15.0) as b:
                dut = b.power_on()
                dut.command(f"ota cut {point}")
                try:
                    device.send(dut, pkg)
                    cut = False
                except (ProtocolError, LinkError, UpdateError):
                    cut = b.qemu.proc.wait(10) == 3
                try:
                    dut = b.power_on()
                    outcome, s = which(dut, labels)
                except (ProtocolError, LinkError):
                    outcome, s = "bricked", {"slot": None}
            counts[outcome] += 1
            trials.append({"op": point, "cut": cut, "runs": outcome, "slot": s["slot"]})
            if i % 20 == 0:
                print(f"  cut {i + 1}/{len(points)} at op {point}: {outcome} ({time.time() - t:.0f} s)", flush=True)
        return {"points": len(points), "outcomes": counts,
                "first_new_at_op": min((tr["op"] for tr in trials if tr["runs"] == "new"), default=None),
                "trials": trials}

    total = int(out["delta"]["flash_ops"])
    first = {slot_image(old, "dsp").sha256.hex(): "old", slot_image(new, "dsp").sha256.hex(): "new"}
    points = sorted({int(p) for p in np.linspace(1, total + 1, cuts)} | special(total)) if cuts else []
    out["power_cuts"] = {"flash_ops_per_update": total, **cut_run(template, delta, points, first)}
    # the second update, slot A -> B (back to the default's weights as version 3): it erases the
    # slot an older boot record still names
    back = make_package(new, old, KEY, version=3)
    second = {slot_image(new, "dsp").sha256.hex(): "old", slot_image(old, "dsp").sha256.hex(): "new"}
    points = sorted({int(p) for p in np.linspace(1, total + 1, cuts2)} | special(total)) if cuts2 else []
    out["power_cuts_second_update"] = cut_run(tmp / "after_delta.bin", back, points, second)
    # cuts the firmware does not choose: QEMU killed (SIGKILL) at random instants of the transfer
    rng = np.random.default_rng(0)
    counts, trials = {"old": 0, "new": 0, "mixed": 0, "bricked": 0}, []
    for at in sorted(rng.uniform(0.0, out["delta"]["wall_s_emulated_uart"] * 1.1, kills)):
        region = Path(shutil.copyfile(template, tmp / "kill.bin"))
        with device.OtaBoard(elf, machine, region, timeout=15.0) as b:
            dut = b.power_on()
            timer = threading.Timer(at, b.qemu.proc.kill)
            timer.start()
            try:
                device.send(dut, delta)
            except (ProtocolError, LinkError, UpdateError):
                pass
            timer.join()
            try:
                dut = b.power_on()
                outcome, s = which(dut, first)
            except (ProtocolError, LinkError):
                outcome, s = "bricked", {"slot": None}
        counts[outcome] += 1
        trials.append({"after_s": round(float(at), 3), "runs": outcome, "slot": s["slot"]})
    out["sigkill_cuts"] = {"points": kills, "outcomes": counts, "trials": trials}
    shutil.rmtree(tmp)
    return out


if __name__ == "__main__":
    main()
