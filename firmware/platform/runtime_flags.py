"""PlatformIO pre-script of every environment: compile the firmware's runtime with its own flags.

The runtime is the interpreter (firmware/lib/harness), the board glue (firmware/src) and the
model library's glue (<model>_model.c: the API and the per-token loop; <model>_tokenizer.c). It
builds with the ini option `custom_runtime_flags` (platformio.ini: -Os and friends), while the
model library's kernels keep the environment's flags (-O2): they are where an inference spends
its time. An optimization level in custom_runtime_flags replaces the environment's.

PlatformIO has no per-library flags that survive an environment's build_unflags (the real
boards' [real] section removes -Os everywhere), so a build middleware gives these sources alone
their flags.
"""
import os

Import("env")  # noqa: F821  (SCons provides Import)

RUNTIME_DIRS = ("firmware/lib/harness", "firmware/src")

runtime_flags = env.GetProjectOption("custom_runtime_flags", "").split()  # noqa: F821
project_dir = env.subst("$PROJECT_DIR")  # noqa: F821
runtime_roots = [os.path.join(project_dir, d) + os.sep for d in RUNTIME_DIRS]
# select_model.py (run before this script) named the model library
model = env.get("TINYSEEK_MODEL", "")  # noqa: F821
model_glue = {f"{model}_model.c", f"{model}_tokenizer.c"}


def _is_opt_level(flag) -> bool:
    return isinstance(flag, str) and flag.startswith("-O")


def _runtime_object(env, node):
    path = os.path.abspath(node.srcnode().get_path())
    if not (any(path.startswith(root) for root in runtime_roots) or os.path.basename(path) in model_glue):
        return node
    flags = env["CCFLAGS"]
    if any(_is_opt_level(f) for f in runtime_flags):
        flags = [f for f in flags if not _is_opt_level(f)]
    return env.Object(node, CCFLAGS=flags + runtime_flags)


if runtime_flags:
    env.AddBuildMiddleware(_runtime_object)  # noqa: F821
