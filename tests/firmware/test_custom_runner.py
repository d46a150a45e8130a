"""`pio test` runner of tinyseek: drives the harness firmware over the serial protocol.

Emulated environments (qemu_*) boot the test build in QEMU; real boards are flashed by
PlatformIO and reached on `test_port` (e.g. `pio test -e nucleo_f446re --test-port /dev/ttyACM0`).
Every check of tinyseek.harness.selftest becomes one test case. The bit-exactness check runs
when the int8 model the firmware was generated from is found: the folder in TINYSEEK_INT8_DIR,
or models/<name>/int8 of the project.
"""
import os
from pathlib import Path

import click

from platformio.public import TestCase, TestRunnerBase, TestStatus

from tinyseek.harness.boards import load_profile
from tinyseek.harness.protocol import DutClient
from tinyseek.harness.qemu import QemuProcess
from tinyseek.harness.selftest import run_checks
from tinyseek.harness.serial_link import SerialLink
from tinyseek.quant.model import ModelFileError, QuantModel


class CustomTestRunner(TestRunnerBase):
    def _model_name(self) -> str:
        if os.environ.get("TINYSEEK_MODEL_DIR"):
            return Path(os.environ["TINYSEEK_MODEL_DIR"]).resolve().name
        return os.environ.get("TINYSEEK_MODEL") or self.project_config.get(
            f"env:{self.test_suite.env_name}", "custom_tinyseek_model")

    def _quant_model(self):
        folder = os.environ.get("TINYSEEK_INT8_DIR") or (
            Path(self.project_config.path).parent / "models" / self._model_name() / "int8")
        try:
            return QuantModel.load(folder)
        except ModelFileError:
            return None

    def _case(self, name, status, message=""):
        case = TestCase(name=f"{self.test_suite.env_name}:{name}", status=status, message=message,
                        stdout=f"{name}: {message}")
        click.echo(case.humanize())
        self.test_suite.add_case(case)

    def stage_testing(self):
        if self.options.without_testing:
            return None
        env = self.test_suite.env_name
        profile = load_profile(env)
        qmodel = self._quant_model()
        if profile.emulated:
            elf = Path(self.project_config.get("platformio", "build_dir")) / env / "firmware.elf"
            with QemuProcess(elf, profile.machine()) as qemu:
                self._run(qemu.url, qmodel)
                code = qemu.wait(10)
                self._case("emulator_exit", TestStatus.PASSED if code == 0 else TestStatus.FAILED,
                           f"QEMU exit code {code}")
        else:
            port = self.get_test_port()
            if not port:
                raise ValueError(f"{env} is a real board: give its serial port with --test-port or test_port")
            self._run(port, qmodel)
        return None

    def _run(self, url, qmodel):
        with SerialLink(url) as link:
            dut = DutClient(link)
            for check in run_checks(dut, qmodel):
                status = {True: TestStatus.PASSED, False: TestStatus.FAILED, None: TestStatus.SKIPPED}[check.passed]
                self._case(check.name, status, check.message)
            if load_profile(self.test_suite.env_name).emulated:
                dut.quit()
