"""Render a QuantModel as a C library folder through the Jinja2 templates of `templates/`.

The output depends only on the model, the templates and the generator version (no
timestamps), so rendering twice gives byte-identical files.
"""
from __future__ import annotations

import json
from pathlib import Path

import jinja2

from .. import __version__
from ..quant.model import QuantModel
from .cformat import c_double, c_ints, c_string
from .context import GENERATOR, build_context
from .identifiers import CodegenError

# tools/tinyseek/codegen/render.py -> the repository root holds templates/.
DEFAULT_TEMPLATES = Path(__file__).resolve().parents[3] / "templates"
# Every generated file carries this phrase in its stamp; only such files are ever replaced.
GENERATED_MARK = "Generated, do not edit"


def template_dir(templates_dir: str | Path | None = None) -> Path:
    d = Path(templates_dir) if templates_dir is not None else DEFAULT_TEMPLATES
    if not (d / "lib").is_dir():
        raise CodegenError(f"C templates not found in {d} (expected {d / 'lib'}); pass templates_dir= "
                           "pointing at the repository's templates/ folder")
    return d


def make_env(templates_dir: str | Path | None = None) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir(templates_dir))),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True, autoescape=False, extensions=["jinja2.ext.do"],
    )
    env.filters.update(c_ints=c_ints, c_string=c_string, c_double=c_double, json=json.dumps)
    return env


def render(model: QuantModel, out_dir: str | Path, *, generator_version: str = __version__,
           templates_dir: str | Path | None = None) -> list[Path]:
    """Write the library of `model` into `out_dir`; returns the written files (sorted).

    Files of an earlier rendering into the same folder that this one does not produce (e.g. the
    tokenizer of a former text model) are removed, but only if they carry the generated stamp.
    """
    ctx = build_context(model, generator_version)
    env = make_env(templates_dir)
    rendered = {out: env.get_template(tpl).render(ctx) for tpl, out in ctx["files"].items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file() and old.name not in rendered and _is_generated(old):
            old.unlink()
    written = []
    for fname, text in sorted(rendered.items()):
        path = out / fname
        path.write_bytes(text.encode("utf-8"))
        written.append(path)
    return written


def _is_generated(path: Path) -> bool:
    try:
        head = path.read_bytes()[:1024].decode("utf-8", errors="replace")
    except OSError:
        return False
    return GENERATED_MARK in head and GENERATOR in head


def render_template(name: str, context: dict, templates_dir: str | Path | None = None) -> str:
    """Render one template (e.g. `host/verify_driver.c.j2`) with the library's filters."""
    return make_env(templates_dir).get_template(name).render(context)
