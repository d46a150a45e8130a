"""The harness firmware on an emulated Cortex-M4 (QEMU mps2-an386), built with PlatformIO
offline: an MLPerf Tiny session, the extra commands, a garbage burst, bit-exactness against the
integer oracle, run_device_bench and `pio test`."""
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mlperf_runner_client import RunnerDevice, auc_ovr, check_name, get_name, infer_results, normalize, top1_percent
from tinyseek.codegen.render import render
from tinyseek.config import TaskConfig
from tinyseek.data import load_task
from tinyseek.data.dataset import stratified_first, take
from tinyseek.harness.evaluate import labeled_accuracy
from tinyseek.harness.bench import build_firmware, own_platform_environ, pio_executable, run_device_bench
from tinyseek.harness.elfmem import memory_report
from tinyseek.harness.protocol import DutClient
from tinyseek.harness.qemu import Machine, QemuProcess
from tinyseek.harness.serial_link import SerialLink
from tinyseek.quant.reference import infer_sequences, infer_tokens, probabilities_text
from tinyseek.quant.model import QuantModel
from tinyseek.quant.synthetic import random_model, random_sequences, random_token_ids
from tinyseek.student.tokenizer import HashTokenizer

ROOT = Path(__file__).resolve().parents[1]
M4 = Machine("qemu-system-arm", "mps2-an386")
TOOLS = {"arm-none-eabi-gcc": "sudo apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi",
         "qemu-system-arm": "sudo apt-get install -y qemu-system-arm"}



@pytest.fixture(scope="module")
def text_fw(tmp_path_factory, need_tools):
    need_tools(TOOLS)
    tmp = tmp_path_factory.mktemp("m4text")
    model = random_model(21, kind="text", hidden=[10, 7], input_size=6, num_classes=4, vocab_size=700, max_len=16,
                         name="m4txt", labels=["on", "off", "温度", "timer"])
    render(model, tmp / "m4txt")
    elf = build_firmware("qemu_m4", tmp / "m4txt", build_dir=tmp / "build")
    return model, elf, tmp


@pytest.fixture
def dut(text_fw):
    with QemuProcess(text_fw[1], M4) as qemu, SerialLink(qemu.url) as link:
        client = DutClient(link)
        client.sync()
        yield client


def test_mlperf_session_info_mem_and_reset(text_fw, dut):
    model, elf, _ = text_fw
    assert dut.name() == "tinyseek"
    info = dut.info()
    assert (info["model"], info["hash"], info["kind"], info["classes"]) == ("m4txt", model.model_hash(), "text", 4)
    assert (info["board"], info["cpu"], info["clock_hz"]) == ("mps2-an386", "cortex-m4", 25_000_000)
    assert (info["timer"], info["unit"]) == ("systick-icount", "instructions")

    ids = [3, 699, 12, 0, 45]
    dut.load(np.array(ids, "<u2").tobytes(), chunk=3)
    reply = dut.command("infer 4 2")
    assert reply.lines[:3] == ["m-warmup-start-2", "m-warmup-done", "m-infer-start-4"]
    assert reply.lines[3].startswith("m-lap-us-") and reply.lines[4].startswith("m-lap-us-")
    assert reply.lines[5] == "m-infer-done"
    want = infer_tokens(model, [ids])[0].tolist()
    results = dut.results()
    assert results["logits"] == want
    assert results["results_text"] == probabilities_text(model, want)

    # -icount makes the count deterministic: every run of the same input costs the same.
    t = dut.infer(3, 0)["time"]
    assert t["min"] == t["max"] and t["total"] == 3 * t["min"] > 1000

    dut.reset()
    assert dut.stream()["logits"] == want

    # What the device measures of itself agrees with the ELF.
    mem, elf_mem = dut.mem(), memory_report(elf, "m4txt", elf.with_name("firmware.map"))
    assert mem["flash_used"] == elf_mem["flash"]["total"]
    assert mem["ram_static"] == elf_mem["ram"]["static"]
    assert 0 < mem["stack_peak"] < mem["stack_size"]
    assert elf_mem["flash"]["model_data"] >= mem["model_flash"] > 0
    assert elf_mem["flash"]["code"] == elf_mem["flash"]["runtime"] + elf_mem["flash"]["model_code"]
    assert elf_mem["ram"]["model"] == mem["model_ram"]


def test_text_model_is_bit_exact_with_the_oracle(text_fw, dut):
    model = text_fw[0]
    rng = np.random.default_rng(3)
    samples = [ids for ids in random_token_ids(model, rng, 12, model.max_len) if ids]
    for ids, want in zip(samples, infer_tokens(model, samples)):
        dut.load(np.array(ids, "<u2").tobytes())
        assert dut.infer(1, 0)["logits"] == want.tolist()
    tok = HashTokenizer(model.vocab_size, model.max_len)
    for text in ["turn on the kitchen lights", "打开客厅的灯，谢谢", "set a timer for 10 minutes", ""]:
        got = dut.classify(text)
        want = infer_tokens(model, [tok.encode(text)])[0]
        assert got["logits"] == want.tolist() and got["class"] == int(np.argmax(want))


def test_garbage_burst_then_a_valid_session(text_fw, dut):
    rng = np.random.default_rng(9)
    noise = bytes(rng.integers(0, 256, size=3000, dtype=np.uint8))  # '%' included: random commands
    dut.link.write(noise)
    dut.sync()
    dut.load(np.array([7, 8, 9], "<u2").tobytes())
    assert dut.infer(1, 0)["logits"] == infer_tokens(text_fw[0], [[7, 8, 9]])[0].tolist()
    assert dut.command("db load 100000", check=False).errors


def test_quit_ends_qemu_with_exit_code_0(text_fw):
    with QemuProcess(text_fw[1], M4) as qemu, SerialLink(qemu.url) as link:
        client = DutClient(link)
        client.sync()
        client.quit()
        assert qemu.wait(10) == 0


def test_sequence_model_and_run_device_bench(tmp_path, need_tools):
    need_tools(TOOLS)
    model = random_model(22, kind="sequence", hidden=12, input_size=5, num_classes=3, name="m4seq")
    render(model, tmp_path / "m4seq")
    x = random_sequences(model, np.random.default_rng(4), 4, 20)
    out = run_device_bench("qemu_m4", tmp_path / "m4seq", x, runs=2, build_dir=tmp_path / "build")
    assert out["logits"] == infer_sequences(model, x).tolist()
    assert out["model"] == {"name": "m4seq", "hash": model.model_hash(), "kind": "sequence", "kernel": "dsp"}
    assert out["latency"]["unit"] == "instructions" and len(out["latency"]["per_input"]) == 4
    assert out["latency"]["min"] > 0 and out["energy"]["per_inference_uj"] > 0
    assert out["memory"]["elf"]["flash"]["model"] > 0 and out["memory"]["stack_peak"] > 0


def test_pio_test_runs_the_custom_runner(text_fw):
    model, _, tmp = text_fw
    model.save(tmp / "int8")
    env = dict(os.environ, TINYSEEK_MODEL_DIR=str(tmp / "m4txt"), TINYSEEK_INT8_DIR=str(tmp / "int8"),
               PLATFORMIO_BUILD_DIR=str(tmp / "piotest"), PLATFORMIO_SETTING_ENABLE_TELEMETRY="no",
               **own_platform_environ(ROOT, "qemu_m4"))
    p = subprocess.run([pio_executable(), "test", "-d", str(ROOT), "-e", "qemu_m4"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "qemu_m4:oracle: 8 random inputs bit-exact\t[PASSED]" in p.stdout
    assert "8 test cases: 8 succeeded" in p.stdout


def test_boot_banner_desynchronises_name_first_and_the_harness_copes(text_fw):
    # wait=on holds the boot until a client connects, as a real board's USB serial: the banner
    # then reaches the first client, and a client that sends name% first reads it as the reply.
    with QemuProcess(text_fw[1], M4, wait_for_client=True) as qemu:
        dev = RunnerDevice(qemu.url)
        try:
            assert dev.send_command("name") == ["m-timestamp-mode-performance", "m-init-done", "m-ready"]
        finally:
            dev.close()
    with QemuProcess(text_fw[1], M4, wait_for_client=True) as qemu, SerialLink(qemu.url) as link:
        client = DutClient(link)
        client.sync()  # tinyseek's harness: the sync token's echo comes after the banner
        assert client.name() == "tinyseek"


def test_the_mlperf_runner_scores_the_default_model_as_tinyseek_bench(tmp_path, need_tools):
    need_tools(TOOLS)
    qm = QuantModel.load(ROOT / "models/intents/int8")
    test = load_task(TaskConfig()).test
    test = take(test, stratified_first(test.y, 200))
    texts, y = list(test.texts), np.asarray(test.y)
    bench = run_device_bench("qemu_m4", ROOT / "firmware/lib/intents", texts, build_dir=tmp_path / "build")
    bench_top1 = 100 * labeled_accuracy(np.asarray(bench["predictions"]), y)

    tok = HashTokenizer(qm.vocab_size, qm.max_len)
    with QemuProcess(Path(bench["elf"]), M4, wait_for_client=True) as qemu:
        # devices.yaml `check_name: tinyseek` (docs/firmware.md): the pre-check's connection takes
        # the boot banner, so the session's name% is answered in step.
        assert check_name(qemu.url, "tinyseek")
        dev = RunnerDevice(qemu.url)
        try:
            assert get_name(dev) == "tinyseek"
            rows = [normalize(infer_results(dev, np.asarray(tok.encode(t), "<u2").tobytes())) for t in texts]
        finally:
            dev.close()
    rows = np.asarray(rows)
    assert top1_percent(rows, y) == bench_top1 > 50
    # The probabilities rank as a float softmax of the same logits does.
    z = np.asarray(bench["logits"]) * qm.output_scale
    p = np.exp(z - z.max(axis=1, keepdims=True))
    assert abs(auc_ovr(rows, y) - auc_ovr(p / p.sum(axis=1, keepdims=True), y)) < 0.005
