"""Render a QuantModel as a C library folder through the Jinja2 templates of `templates/`.

The output depends only on the model, the templates and the generator version (no
timestamps), so rendering twice gives byte-identical files.
"""
from __future__ import annotations

import json
import shutil
import tempfile
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
           templates_dir: str | Path | None = None, overwrite: bool = False) -> list[Path]:
    """Write the library of `model` into `out_dir`; returns the written files (sorted).

    A file of the same name that lacks the generated stamp is someone's own: it stops the
    rendering with an error naming it, unless `overwrite`. Files of an earlier rendering that
    this one does not produce (e.g. the tokenizer of a former text model) are removed; every
    other file in the folder is kept. The folder is rendered beside `out_dir` and swapped in,
    so an interrupted codegen never leaves a mix of old and new files.
    """
    ctx = build_context(model, generator_version)
    env = make_env(templates_dir)
    rendered = {out: env.get_template(tpl).render(ctx) for tpl, out in ctx["files"].items()}
    out = Path(out_dir)
    old = sorted(out.iterdir()) if out.is_dir() else []
    theirs = [p for p in old if p.name in rendered and not (p.is_file() and _is_generated(p))]
    if theirs and not overwrite:
        raise CodegenError(f"{theirs[0]} is not a generated file (no '{GENERATED_MARK}' stamp) and codegen would "
                           f"replace it: move it away, choose another codegen.out_dir, or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    tmp.chmod(out.stat().st_mode if out.is_dir() else 0o755)  # mkdtemp's 0700 would stick
    try:
        for p in old:  # the folder's other files stay; stale generated ones go
            if p.name not in rendered and not (p.is_file() and _is_generated(p)):
                (shutil.copytree if p.is_dir() and not p.is_symlink() else shutil.copy2)(p, tmp / p.name)
        for fname, text in rendered.items():
            (tmp / fname).write_bytes(text.encode("utf-8"))
        if out.is_dir():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(trash / out.name)
            tmp.rename(out)
            shutil.rmtree(trash)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return sorted(out / f for f in rendered)


def _is_generated(path: Path) -> bool:
    try:
        head = path.read_bytes()[:1024].decode("utf-8", errors="replace")
    except OSError:
        return False
    return GENERATED_MARK in head and GENERATOR in head


def render_template(name: str, context: dict, templates_dir: str | Path | None = None) -> str:
    """Render one template (e.g. `host/verify_driver.c.j2`) with the library's filters."""
    return make_env(templates_dir).get_template(name).render(context)
