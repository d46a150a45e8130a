"""The tokenizer rendered to C equals tinyseek.student.tokenizer byte for byte."""
import numpy as np
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


# (vocabulary, subwords, embedding width): whole words only, then hashed n-grams averaged into
# each step (docs/numerics.md, "Subwords"), with a cap that cuts long words and one that does not.
LIBRARIES = [(65535, 0, 1), (7, 0, 1), (65535, 4, 6), (7, 15, 3)]


@pytest.fixture(scope="module", params=LIBRARIES, ids=[f"vocab{v}-sub{s}" for v, s, _ in LIBRARIES])
def driver(request, tmp_path_factory):
    """One compiled library per setting; a large vocabulary makes distinct tokens get distinct ids."""
    V, subwords, E = request.param
    m = random_model(41, kind="text", hidden=[2], input_size=E, num_classes=2, vocab_size=V, max_len=MAX_LEN,
                     name="tok")
    m.subwords = subwords
    tmp = tmp_path_factory.mktemp(f"tok{V}s{subwords}")
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
    tok = HashTokenizer(driver.model.vocab_size, MAX_LEN, driver.model.subwords)
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


MISSPELT = ["turn on the lihgts", "trun off teh light", "plaese stop the muisc", "lightsss", "xqzvw jjjj",
            "打开客厅的等", "关闭空掉", "把温度调到二十二度", "supercalifragilisticexpialidocious now", "a b c 1 22 333"]


def test_misspelt_and_every_step(driver):
    """Misspelt and unseen words, Chinese with wrong characters; the state after every step too
    (step_word / step_token one group at a time)."""
    result = driver.run(MISSPELT + ["打开 灯", "a打b开", "lights\xffon"], every_step=True)
    assert result.c_token_ids_match, result.first_mismatch
    assert result.bitexact, result.first_mismatch


def test_subword_groups():
    """The n-grams the spec names: boundary-marked trigrams of words (capped), bigrams of
    neighbouring single characters, none for numbers; the first ids are the whole-word ids."""
    V = 65535

    def ids(*grams: bytes) -> tuple[int, ...]:
        return tuple(1 + fnv1a(g) % (V - 1) for g in grams)

    tok = HashTokenizer(V, MAX_LEN, 4)
    assert tok.encode_steps("Lights 42 a") == [ids(b"lights", b"<li", b"lig", b"igh", b"ght"), ids(b"#"),
                                               ids(b"a", b"<a>")]
    assert tok.encode_steps("打开 灯") == [ids("打".encode()), ids("开".encode(), "打开".encode()), ids("灯".encode())]
    assert HashTokenizer(V, MAX_LEN, 15).encode_steps("on")[0] == ids(b"on", b"<on", b"on>")
    for text in MISSPELT:
        assert tok.encode(text) == HashTokenizer(V, MAX_LEN).encode(text)
    with pytest.raises(ValueError, match="subwords"):
        HashTokenizer(V, MAX_LEN, 16)


def test_mean_rounds_half_up():
    """The step input of a group: floor((2 S + K) / 2K) per column, the rule the C computes."""
    from tinyseek.quant.reference import mean_rows
    rows = np.array([[[1, -1, 3, -128, 127]], [[2, -2, -4, -128, 127]]]).transpose(1, 0, 2)  # [1, K=2, 5]
    assert mean_rows(rows).tolist() == [[2, -1, 0, -128, 127]]  # 1.5 -> 2, -1.5 -> -1, -0.5 -> 0
    assert mean_rows(np.array([[[5, -7]]])).tolist() == [[5, -7]]  # one id: its row
