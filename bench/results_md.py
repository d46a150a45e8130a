"""Each bench script owns one '## ' section of bench/RESULTS.md; replace_section swaps it in."""
from __future__ import annotations

import json
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(heading: str, section: str, path: Path = RESULTS) -> None:
    """Put `section` (text starting with its '## ' heading) where the section whose heading line
    begins with `heading` stands, or at the end when there is none; the others stay as they are."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    found = re.search("^" + re.escape(heading), text, re.M)
    if found is None:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        nxt = text.find("\n## ", found.end())
        rest = text[nxt + 1:] if nxt >= 0 else ""
        text = text[:found.start()] + section.rstrip("\n") + "\n" + ("\n" + rest if rest else "")
    path.write_text(text)


def publish(out: Path, result: dict, heading: str, section: str, markdown: bool = True) -> None:
    """Write a bench's JSON to `out`, print its section and, unless `markdown` is False, swap it
    into RESULTS.md under `heading`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(section)
    if markdown:
        replace_section(heading, section)


def rewrite_from_json(results_json: Path, args, write_section) -> None:
    """`--md-only`: the bench's section written again from its JSON, with the settings the JSON
    records (else the command line's) as `args`."""
    out = json.loads(results_json.read_text())
    for key, value in out.get("settings", {}).items():
        setattr(args, key, value)
    write_section(out, args)
