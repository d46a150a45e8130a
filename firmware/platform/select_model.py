"""PlatformIO pre-script of every environment: choose the generated model library to link.

The model is, in this order: the library folder in the environment variable TINYSEEK_MODEL_DIR
(a folder holding <name>_model.h, e.g. rendered into a run folder), the name in TINYSEEK_MODEL
(a library in firmware/lib), or the ini option `custom_tinyseek_model`. The firmware never
names the model: this script passes its header as TINYSEEK_MODEL_HEADER (model_glue.c reads the
API table and sizes from it), keeps the name in the construction variable TINYSEEK_MODEL (for
runtime_flags.py), and adds the library to the environment's dependencies.
"""
import glob
import os
import re
import sys

Import("env")  # noqa: F821  (SCons provides Import)


def fail(message):
    sys.stderr.write("Error: " + message + "\n")
    env.Exit(1)  # noqa: F821


section = "env:" + env["PIOENV"]  # noqa: F821
config = env.GetProjectConfig()  # noqa: F821
model_dir = os.environ.get("TINYSEEK_MODEL_DIR", "")
if model_dir:
    headers = sorted(glob.glob(os.path.join(model_dir, "*_model.h")))
    if len(headers) != 1:
        fail(f"TINYSEEK_MODEL_DIR={model_dir} must hold exactly one <name>_model.h (found {len(headers)}); "
             "point it at the folder `tinyseek codegen` wrote")
    model = os.path.basename(headers[0])[: -len("_model.h")]
    if os.path.basename(os.path.normpath(model_dir)) != model:
        fail(f"the library folder {model_dir} must be named after its model {model!r} (PlatformIO finds "
             "libraries by folder name)")
    extra = config.get(section, "lib_extra_dirs", [])
    config.set(section, "lib_extra_dirs", "\n".join(extra + [os.path.dirname(os.path.abspath(model_dir))]))
else:
    model = os.environ.get("TINYSEEK_MODEL") or env.GetProjectOption("custom_tinyseek_model", "")  # noqa: F821
    header = os.path.join(config.get("platformio", "lib_dir"), model, f"{model}_model.h")
    if model and not os.path.isfile(header):
        fail(f"{header} does not exist: generate the model library first with `tinyseek codegen` "
             f"(model name {model!r}), or choose another one with TINYSEEK_MODEL=<name>")

if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", model or ""):
    fail(f"the model name {model!r} is not a lower-case C identifier; set custom_tinyseek_model in "
         "platformio.ini or TINYSEEK_MODEL to the name given to `tinyseek codegen`")

# The model's kind, so the interpreter compiles only that kind's input path (dut.c).
header_dir = model_dir or os.path.join(config.get("platformio", "lib_dir"), model)
kind = re.search(r"#define %s_KIND_TEXT ([01])" % model.upper(),
                 open(os.path.join(header_dir, f"{model}_model.h"), encoding="utf-8").read())
if not kind:
    fail(f"{model}_model.h has no {model.upper()}_KIND_TEXT: regenerate the library with `tinyseek codegen`")

env.Append(CPPDEFINES=[  # noqa: F821
    ("DUT_MODEL_KIND_TEXT", kind.group(1)),
    ("TINYSEEK_MODEL_HEADER", '\\"%s_model.h\\"' % model),
])
env["TINYSEEK_MODEL"] = model  # noqa: F821
deps = [d for d in config.get(section, "lib_deps", []) if d != model]
config.set(section, "lib_deps", "\n".join(deps + [model]))
