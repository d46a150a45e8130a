"""Code generation: reproducible output, stamps, identifiers, the size macros, clean compiles
for the host and for Cortex-M4."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinyseek import __version__
from tinyseek.codegen.cformat import c_double, c_int, c_ints, c_string
from tinyseek.codegen.identifiers import CodegenError, check_name, prefixed
from tinyseek.codegen.render import render
from tinyseek.quant.synthetic import random_model

STRICT = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wshadow", "-Wstrict-prototypes",
          "-Wmissing-prototypes", "-Wcast-qual", "-Wundef", "-Wconversion", "-Wsign-conversion"]
ARM = "arm-none-eabi-gcc"
ARM_INSTALL = "sudo apt-get update && sudo apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi"
# Labels that need every escape of c_string: quotes, backslash, trigraphs, UTF-8, control bytes.
TRICKY_LABELS = ['say "hi"', "back\\slash", "what??=", "开灯", "tab\there", "0\x01digit"]


def _text_model(name="demo", **kw):
    return random_model(21, kind="text", hidden=[5, 7], input_size=6, num_classes=len(TRICKY_LABELS),
                        vocab_size=97, max_len=12, labels=TRICKY_LABELS, name=name, **kw)


def _subword_model(name="sub", **kw):
    """A text model whose steps average hashed n-gram rows in (docs/numerics.md, "Subwords")."""
    m = _text_model(name=name, **kw)
    m.subwords = 5
    return m


def _seq_model(name="seq", **kw):
    return random_model(22, kind="sequence", hidden=[9], input_size=4, num_classes=3, name=name, **kw)


def _macros(header: str) -> dict[str, str]:
    return dict(re.findall(r"^#define\s+(\w+)\s+(.+)$", header, flags=re.M))


def _compile_objects(lib, cc="gcc", flags=STRICT):
    objs = []
    for src in sorted(lib.glob("*.c")):
        obj = src.with_suffix(".o")
        proc = subprocess.run([cc, *flags, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{cc} {src.name}:\n{proc.stderr}"
        objs.append(obj)
    return objs


def _symbols(obj, nm="nm"):
    """(name, size, type letter) of the symbols defined in an object file."""
    out = subprocess.run([nm, "-S", "--defined-only", str(obj)], capture_output=True, text=True, check=True).stdout
    syms = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4:
            syms.append((parts[3], int(parts[1], 16), parts[2]))
    return syms


# -- reproducibility and stamps -------------------------------------------------------------

def test_render_is_byte_identical_for_the_same_inputs(tmp_path):
    a = render(_text_model(), tmp_path / "a")
    b = render(_text_model(), tmp_path / "b")
    again = render(_text_model(), tmp_path / "a")
    assert [p.name for p in a] == [p.name for p in b] == [p.name for p in again]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    assert {p.name for p in a} == {"demo_model.h", "demo_model.c", "demo_model_data.c", "demo_kernels.h",
                                   "demo_kernels_c.c", "demo_kernels_dsp.c", "demo_kernels_mve.c", "demo_kernels_rv32.c", "demo_kernels_neon.c", "demo_kernels_neon32.c", "demo_kernels_v6m.c", "demo_kernels_esp.c", "demo_tokenizer.c", "library.json", "README.md"}
    # A different model (one weight changed) gives a different hash in every stamp.
    m = _text_model()
    m.layers[0].w_x[0, 0] ^= 1
    c = render(m, tmp_path / "c")
    assert (tmp_path / "c" / "demo_model.h").read_text() != (tmp_path / "a" / "demo_model.h").read_text()
    assert m.model_hash() in c[0].read_text()


def test_every_file_carries_the_stamp_and_no_timestamp(tmp_path):
    m = _seq_model()
    files = render(m, tmp_path, generator_version="9.8.7")
    assert "seq_tokenizer.c" not in {p.name for p in files}
    for p in files:
        text = p.read_text()
        head = json.loads(text)["description"] if p.suffix == ".json" else text[:400]
        for needed in ("tinyseek 9.8.7", m.model_hash(), "Generated, do not edit", "`tinyseek codegen`"):
            assert needed in head, f"{p.name} lacks {needed!r}"
        assert not re.search(r"20\d\d-\d\d-\d\d|\d\d:\d\d:\d\d", text), f"{p.name} has a timestamp"
    manifest = json.loads((tmp_path / "library.json").read_text())
    assert manifest["name"] == "seq" and manifest["version"] == "9.8.7" and manifest["headers"] == "seq_model.h"


def test_rerendering_removes_only_stale_generated_files(tmp_path):
    render(_text_model(name="m"), tmp_path)
    (tmp_path / "notes.c").write_text("/* my own file */\n")
    files = render(_seq_model(name="m"), tmp_path)
    assert not (tmp_path / "m_tokenizer.c").exists()
    assert (tmp_path / "notes.c").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in files] + ["notes.c"])


# -- identifiers ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["", "1abc", "int", "while", "_Bool", "asm", "a-b", "x y", "é", "_private",
                                 "x" * 33, None])
def test_bad_model_names_raise(bad, tmp_path):
    with pytest.raises(CodegenError):
        check_name(bad)
    if isinstance(bad, str):
        m = _seq_model()
        m.name = bad
        with pytest.raises(CodegenError):
            render(m, tmp_path / "out")
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("good", ["intents", "m", "Model2", "kws_v1", "e", "x" * 32, "esp32_kws"])
def test_good_model_names_pass(good):
    assert check_name(good) == good
    assert prefixed(good, "reset") == f"{good}_reset"


def test_every_global_symbol_and_macro_is_prefixed(tmp_path):
    for model, prefix in ((_text_model(name="kw"), "kw"), (_subword_model(name="sw"), "sw"), (_seq_model(name="Sq"), "Sq")):
        lib = tmp_path / prefix
        render(model, lib)
        for obj in _compile_objects(lib):
            for sym, _, kind in _symbols(obj):
                if kind.isupper():  # global
                    assert sym.startswith(prefix + "_"), f"{obj.name}: global {sym} is not prefixed"
        # The exceptions: the API table's type, the same in every model's header (guarded), so
        # that code holding several models names it once; and the fixed names a program built
        # around one model asks for with TINYSEEK_SELECT_MODEL (firmware/src/model_glue.c).
        for header in lib.glob("*.h"):
            text = header.read_text()
            selected = text.split("#if defined(TINYSEEK_SELECT_MODEL)")
            assert len(selected) <= 2
            for macro in re.findall(r"^#define\s+(\w+)", selected[0], flags=re.M):
                assert macro.startswith(prefix.upper() + "_") or macro in (
                    "TINYSEEK_MODEL_API_DEFINED", "TINYSEEK_MODEL_API_VERSION"), f"{header.name}: macro {macro}"
            for macro in re.findall(r"^#define\s+(\w+)", "".join(selected[1:]), flags=re.M):
                assert macro.startswith("TINYSEEK_MODEL_"), f"{header.name}: macro {macro}"
            for typedef in re.findall(r"}\s*(\w+);", header.read_text()):
                assert typedef.startswith(prefix + "_") or typedef == "tinyseek_model_api"


def test_the_interpreter_declares_the_api_table_of_the_headers(tmp_path):
    """firmware/lib/harness/dut.h repeats the generated headers' tinyseek_model_api (the harness
    builds without a model header): the two must stay the same, version macro included."""
    def table(text):
        i = text.index("#define TINYSEEK_MODEL_API_VERSION")
        return text[i:text.index("} tinyseek_model_api;", i)]
    render(_seq_model(name="sq"), tmp_path)
    header = (tmp_path / "sq_model.h").read_text()
    dut_h = Path(__file__).resolve().parents[1] / "firmware/lib/harness/dut.h"
    assert table(dut_h.read_text()) == table(header)


TWO_MODELS_C = r"""
#define TINYSEEK_SELECT_MODEL
#include "ka_model.h"
#include "kb_model.h"
#include <stdio.h>
#include <stdlib.h>

/* The fixed names are those of the model included first, ka; kb goes through its table only. */
static TINYSEEK_MODEL_STATE s1, s2;

static void print(const int16_t *z, int n) {
    int k;
    for (k = 0; k < n; k++) printf(k ? " %d" : "%d", z[k]);
    printf("\n");
}

int main(void) {
    static const uint16_t a[] = {A_IDS}, b[] = {B_IDS};
    static const int8_t x[] = {X_FEATURES};
    int16_t za[TINYSEEK_MODEL_NUM_CLASSES], zb[TINYSEEK_MODEL_NUM_CLASSES], zx[KB_NUM_CLASSES];
    void *sx = calloc(1, kb_api.state_bytes);
    unsigned i;
    if (!sx) return 2;
    /* two streams of ka, stepped in turn */
    TINYSEEK_MODEL_API.reset(&s1);
    TINYSEEK_MODEL_API.reset(&s2);
    for (i = 0; i < sizeof a / sizeof a[0]; i++) {
        if (TINYSEEK_MODEL_API.step_token(&s1, a[i]) || TINYSEEK_MODEL_API.step_token(&s2, b[i])) return 3;
    }
    TINYSEEK_MODEL_API.logits(&s1, za);
    TINYSEEK_MODEL_API.logits(&s2, zb);
    if (kb_api.infer(sx, x, (int)(sizeof x / KB_NUM_FEATURES), zx)) return 4;
    print(za, TINYSEEK_MODEL_NUM_CLASSES);
    print(zb, TINYSEEK_MODEL_NUM_CLASSES);
    print(zx, KB_NUM_CLASSES);
    printf("%s %s %d %d %d %d %d\n", kb_api.name, kb_api.kernel, kb_api.kind_text, kb_api.num_features,
           kb_api.step_token == NULL, TINYSEEK_MODEL_API.step == NULL, TINYSEEK_MODEL_API.max_len);
    free(sx);
    return 0;
}
"""


def test_two_models_and_two_streams_through_their_tables(tmp_path):
    """One program, two models (text and sequence) and two interleaved streams of one of them,
    called through the API tables and the TINYSEEK_SELECT_MODEL names only: every logit is the
    oracle's, and the tables describe their models."""
    from tinyseek.quant.reference import infer_sequences, infer_tokens
    ka, kb = _text_model(name="ka"), _seq_model(name="kb")
    render(ka, tmp_path / "ka")
    render(kb, tmp_path / "kb")
    rng = np.random.default_rng(7)
    a, b = (rng.integers(0, ka.vocab_size, size=9).tolist() for _ in range(2))
    x = rng.integers(-128, 128, size=(5, kb.num_features)).astype(np.int8)
    src = (TWO_MODELS_C.replace("A_IDS", ", ".join(map(str, a))).replace("B_IDS", ", ".join(map(str, b)))
           .replace("X_FEATURES", ", ".join(map(str, x.ravel().tolist()))))
    (tmp_path / "main.c").write_text(src)
    exe = tmp_path / "two"
    sources = [tmp_path / "main.c", *sorted((tmp_path / "ka").glob("*.c")), *sorted((tmp_path / "kb").glob("*.c"))]
    proc = subprocess.run(["gcc", "-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-I", str(tmp_path / "ka"),
                           "-I", str(tmp_path / "kb"), *map(str, sources), "-o", str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines()
    want = infer_tokens(ka, [a, b]).tolist() + infer_sequences(kb, x[None]).tolist()
    assert [[int(v) for v in line.split()] for line in out[:3]] == want
    assert out[3] == f"kb c 0 {kb.num_features} 1 1 {ka.max_len}"


# -- the header ------------------------------------------------------------------------------

def test_header_macros_describe_the_model(tmp_path):
    m = _text_model()
    render(m, tmp_path)
    mac = _macros((tmp_path / "demo_model.h").read_text())
    assert mac["DEMO_MODEL_HASH"] == f'"{m.model_hash()}"'
    assert int(mac["DEMO_KIND_TEXT"]) == 1
    assert int(mac["DEMO_NUM_CLASSES"]) == m.num_classes and int(mac["DEMO_INPUT_SIZE"]) == 6
    assert int(mac["DEMO_NUM_LAYERS"]) == 2 and int(mac["DEMO_HIDDEN_SIZE"]) == 7
    assert int(mac["DEMO_VOCAB_SIZE"]) == 97 and int(mac["DEMO_MAX_LEN"]) == 12
    assert float(mac["DEMO_INPUT_SCALE"]) == m.input_scale and float(mac["DEMO_OUTPUT_SCALE"]) == m.output_scale
    header = (tmp_path / "demo_model.h").read_text()
    for fn in ("reset", "step_token", "logits", "infer_tokens", "tokenize", "classify_text", "argmax"):
        assert re.search(rf"\bdemo_{fn}\(", header), fn
    assert "demo_infer(" not in header and "DEMO_NUM_FEATURES" not in header

    s = _seq_model()
    render(s, tmp_path / "s")
    header = (tmp_path / "s" / "seq_model.h").read_text()
    mac = _macros(header)
    assert int(mac["SEQ_KIND_TEXT"]) == 0 and int(mac["SEQ_NUM_FEATURES"]) == 4
    for fn in ("reset", "step", "logits", "infer", "argmax"):
        assert re.search(rf"\bseq_{fn}\(", header), fn
    assert "seq_tokenize" not in header and "SEQ_VOCAB_SIZE" not in header


@pytest.mark.parametrize("make", [_text_model, _subword_model, _seq_model])
def test_size_macros_equal_what_the_arrays_occupy(make, tmp_path):
    m = make()
    render(m, tmp_path)
    N, P = m.name.upper(), m.name
    mac = _macros((tmp_path / f"{P}_model.h").read_text())
    objs = {o.name: o for o in _compile_objects(tmp_path)}
    data = _symbols(objs[f"{P}_model_data.o"])
    arrays = [(s, size) for s, size, kind in data if kind in "rR" and s not in (f"{P}_params", f"{P}_labels")]
    assert int(mac[f"{N}_WEIGHT_BYTES"]) == sum(size for _, size in arrays)
    # Every integer of the QuantModel is in flash: int8/int16/int32 as such, shifts as uint8.
    shifts = sum(a.size for k, a in m.arrays().items() if k.split(".")[-1] in ("nx", "nh", "n"))
    assert int(mac[f"{N}_WEIGHT_BYTES"]) == m.weight_bytes() - 3 * shifts
    ram = {s: size for s, size, kind in _symbols(objs[f"{P}_model.o"]) if kind in "bB"}
    # The state is the caller's (<name>_state); <name>_model.c checks sizeof against STATE_BYTES
    # at compile time: int16 c and int8 h of every unit, padded to 2 bytes.
    units = sum(L.hidden for L in m.layers)
    assert int(mac[f"{N}_STATE_BYTES"]) == 3 * units + units % 2
    assert f"sizeof({P}_state) == {N}_STATE_BYTES" in (tmp_path / f"{P}_model.c").read_text()
    assert int(mac[f"{N}_SCRATCH_BYTES"]) == ram[f"{P}_h_new"]
    assert set(ram) == {f"{P}_h_new"}
    for other in ("kernels", "tokenizer"):  # no other RAM anywhere
        if f"{P}_{other}.o" in objs:
            assert not [s for s, _, kind in _symbols(objs[f"{P}_{other}.o"]) if kind in "bBdD"]
    assert mac[f"{N}_RAM_BYTES"] == f"({N}_STATE_BYTES + {N}_SCRATCH_BYTES)"


@pytest.mark.parametrize("make", [_text_model, _subword_model, _seq_model])
def test_compiles_with_every_warning_as_error(make, tmp_path):
    render(make(), tmp_path)
    _compile_objects(tmp_path)


def test_labels_compile_to_their_utf8_bytes(tmp_path):
    render(_text_model(), tmp_path)
    main = tmp_path / "main.c"
    main.write_text('#include <stdio.h>\n#include "demo_model.h"\nint main(void)\n{\n    int k;\n'
                    "    for (k = 0; k < DEMO_NUM_CLASSES; ++k) {\n        printf(\"%s\\n\", demo_labels[k]);\n    }\n"
                    "    return 0;\n}\n")
    exe = tmp_path / "labels"
    subprocess.run(["gcc", *STRICT[:6], "-I", str(tmp_path), *map(str, sorted(tmp_path.glob("*.c"))), "-o", str(exe)],
                   check=True)
    out = subprocess.run([str(exe)], capture_output=True, check=True).stdout
    assert out == b"".join(label.encode() + b"\n" for label in TRICKY_LABELS)


def test_generated_c_has_no_floats_and_no_malloc(tmp_path):
    render(_text_model(), tmp_path)
    for src in tmp_path.glob("*.c"):
        code = re.sub(r"/\*.*?\*/", "", src.read_text(), flags=re.S)
        # ESP32/S3 builds alone run ESP-DSP's float dot product, exact on int8 data (docs/kernels.md).
        code = re.sub(r"#if defined\(DEMO_KERNEL_ESP\)\n.*?\n#else\n", "", code, flags=re.S)
        assert not re.search(r"\b(float|double|malloc|calloc|realloc|free)\b", code), src.name


# -- the cross compiler ----------------------------------------------------------------------

def _need_arm():
    if shutil.which(ARM) is None:
        msg = f"{ARM} is not on PATH; install it with: {ARM_INSTALL}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.mark.parametrize("make", [_text_model, _subword_model, _seq_model])
def test_compiles_for_cortex_m4_and_needs_no_float_support(make, tmp_path):
    _need_arm()
    render(make(), tmp_path)
    _compile_objects(tmp_path, ARM, ["-mcpu=cortex-m4", "-mthumb", *STRICT])
    # On a core without FPU, a float or double anywhere would call the soft-float helpers.
    objs = _compile_objects(tmp_path, ARM, ["-mcpu=cortex-m0", "-mthumb", "-mfloat-abi=soft", *STRICT])
    nm = shutil.which("arm-none-eabi-nm") or "nm"
    for obj in objs:
        undefined = subprocess.run([nm, "-u", str(obj)], capture_output=True, text=True, check=True).stdout
        assert not re.search(r"__aeabi_[fd]|__aeabi_[iul]+2[fd]|__(add|sub|mul|div)[sd]f3", undefined), obj.name


@pytest.mark.parametrize("ci", ["1", None])
def test_a_missing_cross_compiler_fails_in_ci_and_skips_elsewhere(monkeypatch, ci):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == ARM else real_which(name))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match="apt-get install -y gcc-arm-none-eabi"):
        _need_arm()


# -- the literal helpers ---------------------------------------------------------------------

def test_c_ints_aligns_wraps_and_writes_int32_min():
    text = c_ints(np.array([1, -22, 333, -2**31, 2**31 - 1], np.int64), per_line=2, indent=2)
    lines = text.split("\n")
    assert len(lines) == 3 and all(line.endswith(",") for line in lines)
    assert lines[0] == "  " + ", ".join(v.rjust(len("(-2147483647 - 1)")) for v in ("1", "-22")) + ","
    assert "(-2147483647 - 1)" in lines[1] and "2147483647," in lines[2]
    assert eval("[" + text.replace("\n", "") + "]") == [1, -22, 333, -2**31, 2**31 - 1]
    auto = c_ints(np.arange(100, dtype=np.int8) - 50)
    assert max(len(line) for line in auto.split("\n")) <= 100
    for bad in ([], [2**31], [-2**31 - 1]):
        with pytest.raises(CodegenError):
            c_ints(np.array(bad, np.int64))
    assert c_int(-5) == "-5"


def test_c_string_and_c_double():
    assert c_string('a"b\\c??=d') == r'"a\"b\\c\?\?=d"'
    assert c_string("开") == r'"\345\274\200"'
    assert c_string("1\x012") == r'"1\0012"'
    for x in (0.1, 1e-300, 3.0, 123456.789, 2.0**-40):
        assert float(c_double(x)) == x
    with pytest.raises(CodegenError):
        c_double(float("inf"))


def test_missing_templates_are_reported(tmp_path):
    with pytest.raises(CodegenError, match="templates"):
        render(_seq_model(), tmp_path / "out", templates_dir=tmp_path / "nowhere")


def test_version_default_is_the_package_version(tmp_path):
    render(_seq_model(), tmp_path)
    assert f"tinyseek {__version__}" in (tmp_path / "seq_model.h").read_text()
