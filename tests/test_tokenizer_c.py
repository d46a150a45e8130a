"""The tokenizer rendered to C equals tinyseek.student.tokenizer byte for byte."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyseek.codegen.render import render
from tinyseek.codegen.verify import HostDriver
from tinyseek.quant.synthetic import random_model
from tinyseek.student.tokenizer import HashTokenizer, fnv1a

MAX_LEN = 16
CASES = [
    # English, case, digits (every number shares one id), punctuation
    "Turn ON the lights", "turn on the LIGHTS", "set 10 timers at 7:30", "a1 1a 007 3.14 -5", "hello,world!?",
    "tab\tnew\nline  spaces", "under_score and-dash", "'quoted' \"double\" (paren) [bracket] {brace}",
    # Chinese, mixed, full-width and CJK punctuation (separators), full-width letters (singles)
    "打开客厅的灯", "把温度调到22度", "播放music然后stop", "你好，世界！", "（括号）：；？。、「引号」",
    "ＡＢＣ１２３", "中", "…—–‘’“”", "½ ¿ « » ° ±", "é è ß ø", "Ελληνικά кириллица", "😀 🎉x 𝄞",
    # ranges at the separator boundaries
    "\u00bf\u00c0", "\u1fff\u2000\u206f\u2070", "\u2fff\u3000\u303f\u3040", "\uff00\uff0f\uff10\uff19\uff1a\uff20\uff21",
    # empty, only separators, over-long (truncated to MAX_LEN tokens)
    "", "   ", "!!!", "word " * 40, "字" * 40, "a " * 15 + "打开 灯 b c",
]
BYTE_CASES = [
    b"\xff", b"\xfe\xff abc", b"\x80\x80 x", b"\xc0\xaf", b"\xc1\x81", b"\xe0\x81\x81",  # invalid / overlong
    b"\xe4\xb8", b"abc \xe4\xb8", b"\xf0\x9f\x98", b"\xf0\x9f\x98\x80\xf0\x9f",  # truncated at the end
    b"\xe4\xb8\xad\xe4", b"\xe4x\xb8\xad", b"\xf5\x80\x80\x80 \xf8", b"\xc2\xa0nbsp", b"\xf4\x8f\xbf\xbf",
    b"\x00NUL\x00", b"a\xe4\xb8\xadb", b"12\xe4\xb8\xad34",
]
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", params=[65535, 7], ids=["vocab65535", "vocab7"])
def driver(request, tmp_path_factory):
    """One compiled library per vocabulary size; a large one makes distinct tokens get distinct ids."""
    V = request.param
    m = random_model(41, kind="text", hidden=[2], input_size=1, num_classes=2, vocab_size=V, max_len=MAX_LEN,
                     name="tok")
    tmp = tmp_path_factory.mktemp(f"tok{V}")
    render(m, tmp / "lib")
    return HostDriver(m, tmp / "lib", tmp / "work")


def _assert_same(driver, texts):
    result = driver.run(texts)
    assert result.c_token_ids_match, result.first_mismatch
    assert result.bitexact, result.first_mismatch  # classify_text on the C ids = oracle on Python ids


def test_fixed_strings(driver):
    _assert_same(driver, CASES + BYTE_CASES)


def test_fixed_strings_are_not_trivial(driver):
    """The cases above exercise truncation, the number id and both kinds of tokens."""
    tok = HashTokenizer(driver.model.vocab_size, MAX_LEN)
    assert len(tok.encode("word " * 40)) == MAX_LEN
    assert tok.encode("7") == tok.encode("2024") == [1 + fnv1a(b"#") % (driver.model.vocab_size - 1)]
    assert len(tok.encode("打开客厅的灯")) == 6 and tok.encode("") == []


def test_surrogates_and_code_points_above_unicode(driver):
    # The spec's decoder accepts ED A0..BF xx (surrogates) and F4 90..BF xx xx (above U+10FFFF);
    # both sides hash their generic UTF-8 form.
    _assert_same(driver, [b"\xed\xa0\x80 x", b"\xf4\x90\x80\x80"])


utf8_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40).map(lambda s: s.encode("utf-8"))
cjk_text = st.text(alphabet=st.sampled_from("打开灯关空调温度，。！？：ＡＢ１２ab AB09 .-é😀"), max_size=40).map(str.encode)
truncated = st.tuples(utf8_text, st.integers(0, 200)).map(lambda t: t[0][: t[1]])
mixed = st.lists(st.one_of(utf8_text, cjk_text, st.binary(max_size=6)), max_size=5).map(b"".join)
inputs = st.one_of(st.binary(max_size=120), utf8_text, cjk_text, truncated, mixed)


@given(batch=st.lists(inputs, min_size=1, max_size=25))
@SETTINGS
def test_generated_byte_strings(driver, batch):
    _assert_same(driver, batch)
