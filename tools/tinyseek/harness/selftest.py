"""Checks of a running firmware over the serial protocol, for any model it was built with.

Used by the PlatformIO test runner (tests/firmware/test_custom_runner.py, `pio test`) on
emulated and real boards alike: the protocol session of the MLPerf Tiny runner, determinism,
streaming state, error replies, a garbage burst, memory figures, and — when the int8 model the
firmware was generated from is at hand — bit-exactness against the integer oracle.
"""
from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..quant.reference import probabilities_text
from .protocol import DutClient, ProtocolError, parse_ints

# Commands every firmware must refuse with exactly one error line.
BAD_COMMANDS = ["bogus", "db", "db load 0", "db load x", "infer 0", "infer 1 2 3", "db zz", "sync"]


@dataclass
class Check:
    name: str
    passed: bool | None  # None: skipped
    message: str = ""


def _random_input(info: dict, rng: np.random.Generator) -> bytes:
    if info["kind"] == "text":
        n = int(rng.integers(1, info["max_len"] + 1))
        return rng.integers(0, info["vocab"], size=n).astype("<u2").tobytes()
    steps = int(rng.integers(1, 9))
    return rng.integers(-128, 128, size=steps * info["features"]).astype(np.int8).tobytes()


def _oracle(qmodel, data: bytes) -> list[int]:
    from ..quant.reference import infer_sequences, infer_tokens
    if qmodel.kind == "text":
        return infer_tokens(qmodel, [np.frombuffer(data, "<u2").tolist()])[0].tolist()
    x = np.frombuffer(data, np.int8).reshape(1, -1, qmodel.num_features)
    return infer_sequences(qmodel, x)[0].tolist()


def run_checks(dut: DutClient, qmodel=None, seed: int = 0, samples: int = 8) -> list[Check]:
    """Run every check; a failing check does not stop the others."""
    rng = np.random.default_rng(seed)
    checks: list[Check] = []
    state: dict = {}

    def check(name: str, fn: Callable[[], str | None]) -> None:
        try:
            checks.append(Check(name, True, fn() or ""))
        except AssertionError as e:
            checks.append(Check(name, False, str(e)))
        except (ProtocolError, ValueError) as e:
            checks.append(Check(name, False, f"{type(e).__name__}: {e}"))
        except Exception:  # a bug in a check must not hide the other results
            checks.append(Check(name, False, traceback.format_exc(limit=3)))

    def identity():
        dut.sync()
        assert dut.name() == "tinyseek", "name% must answer m-name-dut-[tinyseek]"
        info = state["info"] = dut.info()
        model_line = dut.command("profile").field("model")
        assert model_line == f"{info['model']}-{info['hash']}", f"profile {model_line!r} vs info {info}"
        return f"{info['model']} {info['hash']} on {info['board']} ({info['timer']}, {info['unit']})"

    def mlperf_session():
        info = state["info"]
        data = state["input"] = _random_input(info, rng)
        dut.load(data, chunk=31)  # the chunk size of the MLPerf Tiny runner
        reply = dut.command("infer 3 1")
        for line in ("m-warmup-start-1", "m-warmup-done", "m-infer-start-3", "m-infer-done"):
            assert line in reply.lines, f"missing {line} in {reply.lines}"
        # energy builds pulse the timestamp pin instead of printing the two laps
        laps = 0 if info.get("timestamps") == "energy" else 2
        assert sum(line.startswith("m-lap-us-") for line in reply.lines) == laps, reply.lines
        logits = state["logits"] = parse_ints(reply.field("logits"))
        assert len(logits) == info["classes"], f"{len(logits)} logits for {info['classes']} classes"
        results = dut.results()
        assert results["logits"] == logits, "results% differs from the inference's logits"
        # m-results: class probabilities with five decimals, what the MLPerf Tiny runner scores
        assert abs(sum(results["results"]) - 1) <= 0.5e-5 * len(logits) + 1e-9, results["results_text"]
        t = dut.infer(2, 0)["time"]
        assert t["runs"] == 2 and 0 < t["min"] <= t["max"] and t["total"] == t["min"] + t["max"], t
        return f"{t['total'] / t['runs']:.0f} {t['unit']} per inference"

    def deterministic():
        assert dut.infer(1, 0)["logits"] == state["logits"], "the same input gave other logits"
        dut.reset()
        assert dut.stream()["logits"] == state["logits"], "reset + stream differs from infer"

    def errors():
        for bad in BAD_COMMANDS:
            reply = dut.command(bad, check=False)
            assert len(reply.errors) == 1 and not any(
                line.startswith("m-logits") for line in reply.lines), f"{bad!r} -> {reply.lines} {reply.errors}"
        assert dut.name() == "tinyseek"

    def garbage():
        noise = bytes(b for b in rng.integers(0, 256, size=2000, dtype=np.uint8) if b != ord("%"))
        dut.link.write(noise)
        dut.link.write(b"x" * 700 + b"%")
        dut.sync()
        dut.load(state["input"])
        assert dut.infer(1, 0)["logits"] == state["logits"], "logits changed after the garbage burst"

    def memory():
        mem = dut.mem()
        if mem["stack_peak"] is not None:
            assert 0 < mem["stack_peak"] < mem["stack_size"], f"stack peak {mem['stack_peak']} of {mem['stack_size']}"
        return ", ".join(f"{k}={v}" for k, v in mem.items())

    def oracle():
        info = state["info"]
        for k in range(samples):
            data = _random_input(info, rng)
            dut.load(data)
            out = dut.infer(1, 0)
            got, want = out["logits"], _oracle(qmodel, data)
            assert got == want, f"sample {k}: device {got} != oracle {want}"
            probs = probabilities_text(qmodel, want)
            assert out["results_text"] == probs, f"sample {k}: m-results {out['results_text']} != oracle {probs}"
        return f"{samples} random inputs bit-exact"

    check("identity", identity)
    if not checks[-1].passed:
        return checks
    for name, fn in (("mlperf_session", mlperf_session), ("deterministic", deterministic), ("errors", errors),
                     ("garbage_burst", garbage), ("memory", memory)):
        check(name, fn)
    if qmodel is None or "info" not in state or qmodel.model_hash() != state["info"]["hash"]:
        checks.append(Check("oracle", None, "the int8 model of this firmware is not available"))
    else:
        check("oracle", oracle)
    return checks

