"""Render the audio front end as C (`<name>_frontend.h/.c`) through templates/audio/."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..codegen.context import GENERATOR
from ..codegen.render import make_env
from .frontend import FrontendConfig

REGENERATE = "python -m tinyseek.audio.codegen"


def render_frontend(cfg: FrontendConfig, out_dir: str | Path, name: str = "audio",
                    generator_version: str = __version__) -> list[Path]:
    """Write `<name>_frontend.h` and `.c` into `out_dir`; deterministic (no timestamps)."""
    if not name.isidentifier() or not name.isascii():
        raise ValueError(f"front-end name {name!r} must be a C identifier")
    cfg.validate()
    env = make_env()
    ctx = {"cfg": cfg, "t": cfg.tables, "name": name, "NAME": name.upper(),
           "generator": GENERATOR, "version": generator_version, "command": REGENERATE, "digest": cfg.digest}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for suffix in ("h", "c"):
        path = out / f"{name}_frontend.{suffix}"
        path.write_bytes(env.get_template(f"audio/frontend.{suffix}.j2").render(ctx).encode())
        files.append(path)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description="Render the default audio front end as C.")
    ap.add_argument("--out", required=True, type=Path, help="folder for <name>_frontend.h/.c")
    ap.add_argument("--name", default="audio", help="C prefix of the functions and files")
    args = ap.parse_args()
    for path in render_frontend(FrontendConfig(), args.out, args.name):
        print(path)


if __name__ == "__main__":
    main()
