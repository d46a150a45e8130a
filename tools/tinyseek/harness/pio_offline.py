"""PlatformIO without the registry: install the `tool-scons` core package from PyPI's scons.

PlatformIO Core runs every build through its `tool-scons` package and downloads it from the
PlatformIO registry on first use. Here the registry is out of reach, so this module builds that
package from the `scons` wheel installed next to PlatformIO: the SCons tree, a `scons.py`
launcher, a package.json with the version the core asks for, and a `.piopm` that records owner
`platformio` (without it the core does not recognise the package and goes to the registry).

Run `python -m tinyseek.harness.pio_offline` once per machine (the Makefile and the firmware
tests do it); it is quick and does nothing when the package is already in place.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

PACKAGE = "tool-scons"

_LAUNCHER = '''"""Launcher of the SCons tree next to this file (made by tinyseek.harness.pio_offline)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from SCons.Script import main  # noqa: E402

main()
'''


class PlatformIOSetupError(ValueError):
    """PlatformIO or scons is missing, or their versions do not fit together."""


def _scons_source() -> tuple[Path, str]:
    try:
        import SCons
    except ImportError as e:
        raise PlatformIOSetupError(
            "scons is not installed; run: .venv/bin/pip install platformio scons") from e
    return Path(SCons.__file__).parent, str(SCons.__version__)


def package_version(scons_version: str) -> str:
    """PlatformIO's version of a scons release: 4.11.1 -> 4.41101.0."""
    parts = scons_version.split(".")
    if len(parts) < 3 or not all(p.isdigit() for p in parts[:3]):
        raise PlatformIOSetupError(f"unexpected scons version {scons_version!r}")
    major, minor, patch = (int(p) for p in parts[:3])
    return f"{major}.{major}{minor:02d}{patch:02d}.0"


def _core_requirement() -> str:
    try:
        from platformio.dependencies import get_core_dependencies
    except ImportError as e:
        raise PlatformIOSetupError(
            "platformio is not installed; run: .venv/bin/pip install platformio scons") from e
    return get_core_dependencies()[PACKAGE]


def packages_dir(project_dir: str | Path | None = None) -> Path:
    """The folder where PlatformIO looks for tool packages (honours PLATFORMIO_CORE_DIR)."""
    from platformio.project.config import ProjectConfig
    ini = Path(project_dir or ".") / "platformio.ini"
    config = ProjectConfig(str(ini)) if ini.is_file() else ProjectConfig()
    return Path(config.get("platformio", "packages_dir"))


def _is_ready(target: Path, version: str) -> bool:
    meta = target / ".piopm"
    if not (meta.is_file() and (target / "SCons" / "__init__.py").is_file()):
        return False
    try:
        return json.loads(meta.read_text()).get("version") == version
    except json.JSONDecodeError:
        return False


def ensure_scons_package(project_dir: str | Path | None = None) -> Path:
    """Install `tool-scons` into PlatformIO's packages folder unless it is already there;
    returns the package folder."""
    import semantic_version

    source, scons_version = _scons_source()
    version = package_version(scons_version)
    requirement = _core_requirement()
    if semantic_version.Version(version) not in semantic_version.SimpleSpec(requirement):
        wanted = requirement.lstrip("~^=")
        major, rest = wanted.split(".")[:2]
        raise PlatformIOSetupError(
            f"PlatformIO needs tool-scons {requirement} but the installed scons {scons_version} gives "
            f"{version}; install the matching scons: .venv/bin/pip install "
            f"'scons=={major}.{int(rest[1:3])}.{int(rest[3:5])}'")
    target = packages_dir(project_dir) / PACKAGE
    if _is_ready(target, version):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build it beside the packages folder (where PlatformIO does not look) and move it in whole,
    # so a concurrent build never sees half a package.
    tmp = Path(tempfile.mkdtemp(prefix=".tool-scons-", dir=target.parent.parent))
    try:
        shutil.copytree(source, tmp / "SCons", ignore=shutil.ignore_patterns("__pycache__"))
        (tmp / "scons.py").write_text(_LAUNCHER)
        (tmp / "package.json").write_text(json.dumps({
            "name": PACKAGE, "version": version,
            "description": f"SCons {scons_version} from PyPI, packaged by tinyseek for offline PlatformIO",
        }, indent=2) + "\n")
        (tmp / ".piopm").write_text(json.dumps({
            "type": "tool", "name": PACKAGE, "version": version,
            "spec": {"owner": "platformio", "id": None, "name": PACKAGE, "requirements": None, "uri": None},
        }))
        tmp.chmod(0o755)  # mkdtemp makes it private
        if _is_ready(target, version):  # another process finished first
            return target
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_ready(target, version):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def main() -> int:
    try:
        path = ensure_scons_package(Path.cwd())
    except PlatformIOSetupError as e:
        print(f"error: {e}")
        return 1
    print(f"{PACKAGE} ready in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
