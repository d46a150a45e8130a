"""The generated library as an Arduino IDE library: library.properties, the C files in src/ and an
examples/classify sketch that classifies what is typed in the Serial Monitor (text models) or
the steps typed there (sequence models).

    tinyseek arduino --out build/arduino      # -> build/arduino/<name>/, zip it or copy it to
                                              #    ~/Arduino/libraries/
"""
from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..quant.model import QuantModel
from .context import build_context
from .render import make_env, render

SKETCH = "classify"


def render_arduino(model: QuantModel, out_dir: str | Path, *, generator_version: str = __version__,
                   templates_dir: str | Path | None = None) -> list[Path]:
    """Write the Arduino library of `model` into out_dir/<name>/; returns the written files."""
    lib = Path(out_dir) / model.name
    written = render(model, lib / "src", generator_version=generator_version, templates_dir=templates_dir)
    (lib / "src" / "library.json").unlink()  # PlatformIO's manifest; library.properties replaces it
    written = [p for p in written if p.name != "library.json"]
    ctx = {**build_context(model, generator_version), "sketch": SKETCH}
    env = make_env(templates_dir)
    for template, path in (("arduino/library.properties.j2", lib / "library.properties"),
                           ("arduino/classify.ino.j2", lib / "examples" / SKETCH / f"{SKETCH}.ino")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(env.get_template(template).render(ctx).encode("utf-8"))
        written.append(path)
    return sorted(written)
