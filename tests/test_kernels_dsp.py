"""The DSP-extension (SXTB16 + SMLAD) gate kernels on an emulated Cortex-M4 (QEMU mps2-an386):
chosen by the compile-time dispatch, bit-exact with the integer oracle on random models with
sizes that are not multiples of 4 and extreme weights, and cheaper than the portable C, which
-DTINYSEEK_KERNEL_PORTABLE still selects."""
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinyseek.codegen.render import render
from tinyseek.harness.bench import build_firmware
from tinyseek.harness.protocol import DutClient
from tinyseek.harness.qemu import Machine, QemuProcess
from tinyseek.harness.serial_link import SerialLink
from tinyseek.quant.reference import infer_sequences, infer_tokens
from tinyseek.quant.synthetic import random_model, random_sequences, random_token_ids

M4 = Machine("qemu-system-arm", "mps2-an386")
TOOLS = {"arm-none-eabi-gcc": "sudo apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi",
         "arm-none-eabi-nm": "sudo apt-get install -y gcc-arm-none-eabi",
         "qemu-system-arm": "sudo apt-get install -y qemu-system-arm"}



def _symbols(elf: Path) -> set[str]:
    out = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def _run(elf: Path, payloads: list[bytes]) -> tuple[list[list[int]], list[int]]:
    """Logits and instruction counts of one inference per payload."""
    logits, counts = [], []
    with QemuProcess(elf, M4) as qemu, SerialLink(qemu.url) as link:
        dut = DutClient(link)
        dut.sync()
        for data in payloads:
            dut.load(data)
            out = dut.infer(1, 0)
            logits.append(out["logits"])
            counts.append(out["time"]["min"])
    return logits, counts


@pytest.mark.slow
def test_dsp_gates_are_bit_exact_and_selected_on_the_m4(tmp_path, need_tools):
    need_tools(TOOLS)
    # Input 7, hidden 13 then 6: every dot product has a scalar tail (or is only a tail).
    seq = random_model(31, kind="sequence", hidden=[13, 6], input_size=7, num_classes=3,
                       weights="extreme", name="dspseq")
    # Embedding 9 and hidden 3: the tail alone for h, one word plus a tail for x.
    txt = random_model(32, kind="text", hidden=[3, 10], input_size=9, num_classes=5, vocab_size=300,
                       max_len=12, weights="extreme", name="dsptxt")
    rng = np.random.default_rng(5)
    xs = np.concatenate([random_sequences(seq, rng, 4, 20), random_sequences(seq, rng, 4, 20, extreme=True)])
    ids = [t for t in random_token_ids(txt, rng, 10, txt.max_len) if t]
    cases = [(seq, [x.tobytes() for x in xs], infer_sequences(seq, xs)),
             (txt, [np.array(t, "<u2").tobytes() for t in ids], infer_tokens(txt, ids))]

    for model, payloads, want in cases:
        # Saturated outputs would hide a wrong sum: the inputs must tell the models apart.
        assert len({tuple(row) for row in want.tolist()}) == len(payloads)
        render(model, tmp_path / model.name)
        dsp = build_firmware("qemu_m4", tmp_path / model.name, build_dir=tmp_path / f"{model.name}-dsp")
        syms = _symbols(dsp)
        assert {f"{model.name}_l0_step_dsp", f"{model.name}_l1_step_dsp", f"{model.name}_head_dsp"} <= syms
        got, dsp_counts = _run(dsp, payloads)
        assert got == want.tolist()

        portable = build_firmware("qemu_m4", tmp_path / model.name, build_dir=tmp_path / f"{model.name}-c",
                                  extra_flags=["-DTINYSEEK_KERNEL_PORTABLE"])
        assert not any(s.endswith("_dsp") for s in _symbols(portable))
        got, c_counts = _run(portable, payloads)
        assert got == want.tolist()
        # Same inputs, same step counts: the dual MACs must cost fewer instructions.
        assert all(d < c for d, c in zip(dsp_counts, c_counts)), (dsp_counts, c_counts)
