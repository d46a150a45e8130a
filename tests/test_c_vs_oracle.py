"""The generated C against the numpy oracle, bit for bit, on random models of every shape,
value and scale range (compiled with UBSan, so undefined behaviour fails too)."""
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyseek.codegen.render import render
from tinyseek.codegen.verify import HostDriver, VerifyError, verify_host
from tinyseek.quant.synthetic import SCALE_MODES, WEIGHT_MODES, random_model, random_sequences, random_token_ids

UBSAN = ("-fsanitize=undefined", "-fno-sanitize-recover=undefined")
TEXTS = ["turn on the kitchen lights", "打开客厅的灯", "Set timer 10 minutes!!", "", "ÄÖÜ straße 😀 x",
         "word " * 80, "\xff not utf8".encode("latin-1"), "温度 set to 22 度，please。"]
PROPERTY = settings(max_examples=15, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def model_specs(draw, kind):
    layers = draw(st.integers(1, 2))
    return dict(
        seed=draw(st.integers(0, 2**32 - 1)), kind=kind,
        hidden=[draw(st.integers(1, 40)) for _ in range(layers)],
        input_size=draw(st.integers(1, 24)), num_classes=draw(st.integers(1, 9)),
        vocab_size=draw(st.integers(2, 3000)), max_len=draw(st.integers(1, 64)),
        weights=draw(st.sampled_from(WEIGHT_MODES)), biases=draw(st.sampled_from(WEIGHT_MODES)),
        scales=draw(st.sampled_from(SCALE_MODES)),
        cell_frac_bits=[draw(st.integers(7, 12)) for _ in range(layers)],
    )


def _check(model, inputs, **kw):
    with tempfile.TemporaryDirectory() as tmp:
        render(model, Path(tmp) / "lib")
        result = verify_host(model, Path(tmp) / "lib", inputs, every_step=True, cflags=UBSAN, **kw)
    assert result.samples == len(inputs)
    assert result.bitexact, f"{result.mismatches} samples differ; first: {result.first_mismatch}"
    return result


@pytest.mark.slow
@given(spec=model_specs("sequence"), steps=st.integers(0, 200), extreme=st.booleans())
@PROPERTY
def test_sequence_models_match_the_oracle(spec, steps, extreme):
    m = random_model(**spec)
    rng = np.random.default_rng(spec["seed"])
    x = random_sequences(m, rng, 6, steps, extreme)
    ragged = [x[k, : int(rng.integers(0, steps + 1))] for k in range(len(x))]
    _check(m, list(x) + ragged)


@pytest.mark.slow
@given(spec=model_specs("text"), steps=st.integers(0, 200))
@PROPERTY
def test_text_models_match_the_oracle(spec, steps):
    m = random_model(**spec)
    ids = random_token_ids(m, np.random.default_rng(spec["seed"]), len(TEXTS), steps)
    result = _check(m, TEXTS, token_ids=ids)
    assert result.c_token_ids_match


@pytest.mark.parametrize("kind, hidden, weights, scales", [
    ("text", [13, 6], "extreme", "mixed"), ("sequence", [17], "normal", "normal"), ("sequence", [3, 21], "extreme", "huge"),
    ("sequence", [12, 5], "normal", "pow2"),  # exact ties in every rounding
])
def test_fixed_models_match_the_oracle(kind, hidden, weights, scales):
    m = random_model(31, kind=kind, hidden=hidden, weights=weights, scales=scales, biases=weights,
                     input_size=10, num_classes=5, vocab_size=500, max_len=20)
    rng = np.random.default_rng(31)
    if kind == "text":
        _check(m, TEXTS, token_ids=random_token_ids(m, rng, len(TEXTS), 120))
    else:
        _check(m, random_sequences(m, rng, 10, 120, extreme=weights == "extreme"))


# -- the checker itself must catch a wrong kernel ---------------------------------------------

@pytest.fixture
def text_lib(tmp_path):
    m = random_model(32, kind="text", hidden=[8], input_size=5, vocab_size=300, max_len=10)
    render(m, tmp_path / "lib")
    return m, tmp_path / "lib"


def _patch(path: Path, old: str, new: str):
    src = path.read_text()
    assert old in src
    path.write_text(src.replace(old, new))


def test_a_rounding_bug_in_the_kernels_is_reported(text_lib, tmp_path):
    m, lib = text_lib
    _patch(lib / f"{m.name}_kernels.h", "+ 128) >> 8);", ") >> 8);")  # truncate instead of round
    # A 1-LSB error of an activation rarely reaches the int8 logits of a few short texts, but the
    # per-step state comparison sees it.
    result = verify_host(m, lib, TEXTS, every_step=True, workdir=tmp_path / "work")
    assert not result.bitexact and result.mismatches > 0 and result.c_token_ids_match
    assert "after step" in result.first_mismatch["path"]
    assert len(result.first_mismatch["expected"]) == len(result.first_mismatch["got"])


def test_a_tokenizer_bug_is_reported(text_lib):
    m, lib = text_lib
    _patch(lib / f"{m.name}_tokenizer.c", "16777619u", "16777618u")
    result = verify_host(m, lib, TEXTS)
    assert not result.bitexact and result.c_token_ids_match is False
    assert result.first_mismatch["path"] == "C tokenizer ids"


def test_verify_errors_name_the_problem(text_lib, tmp_path):
    m, lib = text_lib
    with pytest.raises(VerifyError, match="apt-get install"):
        verify_host(m, lib, TEXTS, cc="no-such-compiler-tinyseek")
    other = random_model(33, kind="text", hidden=[8], input_size=5, vocab_size=300, max_len=10)
    with pytest.raises(VerifyError, match="tinyseek codegen"):
        verify_host(other, lib, TEXTS)
    with pytest.raises(VerifyError, match="tinyseek codegen"):
        verify_host(m, tmp_path / "empty", TEXTS)
    _patch(lib / f"{m.name}_model.c", "void {0}_reset({0}_state *s)".format(m.name), "void {0}_reset({0}_state *s) oops".format(m.name))
    with pytest.raises(VerifyError, match=r"(?s)compiling the generated C failed.*error"):
        verify_host(m, lib, TEXTS)


def test_one_compiled_driver_runs_many_batches(text_lib, tmp_path):
    m, lib = text_lib
    driver = HostDriver(m, lib, tmp_path / "work")
    assert driver.compiler.startswith("gcc ")
    a = driver.run(TEXTS[:3])
    b = driver.run(TEXTS)
    assert a.bitexact and b.bitexact and np.array_equal(a.logits, b.logits[:3])
    assert driver.run([]).samples == 0
    assert shutil.which("gcc")
