import os
import shutil
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def need_tools():
    """need_tools({program: install command}) fails (under CI) or skips naming what is missing,
    with the command that installs it; PlatformIO too unless pio=False (tests that call the
    compilers directly)."""
    def check(tools: dict[str, str], pio: bool = True) -> None:
        missing = [f"{tool} (install: {cmd})" for tool, cmd in tools.items() if shutil.which(tool) is None]
        if pio and not Path(sys.executable).with_name("pio").is_file() and shutil.which("pio") is None:
            missing.append("pio (install: .venv/bin/pip install platformio scons)")
        if missing:
            msg = "missing: " + "; ".join(missing)
            if os.environ.get("CI"):
                pytest.fail(msg)
            pytest.skip(msg)
    return check


@pytest.fixture(scope="session")
def default_lib(tmp_path_factory):
    """The committed default model rendered once (read-only for the tests), and the first 120
    test texts of its task."""
    from tinyseek.codegen.render import render
    from tinyseek.config import load
    from tinyseek.data import load_task
    from tinyseek.quant.model import QuantModel

    model = QuantModel.load(Path(__file__).resolve().parents[1] / "models" / "intents" / "int8")
    lib = tmp_path_factory.mktemp("default_lib") / model.name
    render(model, lib)
    return model, lib, list(load_task(load().task).test.texts)[:120]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matrices: one torch thread is as fast, and far faster on a machine shared with other
    jobs (and what train_student itself uses)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
