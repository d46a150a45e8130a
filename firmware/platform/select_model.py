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


def choose(role, dir_var, name_var, option):
    """(name, folder holding <name>_model.h) of the library in $dir_var, $name_var or the ini
    option; ("", "") when none is given."""
    model_dir = os.environ.get(dir_var, "")
    if model_dir:
        headers = sorted(glob.glob(os.path.join(model_dir, "*_model.h")))
        if len(headers) != 1:
            fail(f"{dir_var}={model_dir} must hold exactly one <name>_model.h (found {len(headers)}); "
                 "point it at the folder `tinyseek codegen` wrote")
        model = os.path.basename(headers[0])[: -len("_model.h")]
        if os.path.basename(os.path.normpath(model_dir)) != model:
            fail(f"the library folder {model_dir} must be named after its model {model!r} (PlatformIO finds "
                 "libraries by folder name)")
        extra = config.get(section, "lib_extra_dirs", [])
        config.set(section, "lib_extra_dirs", "\n".join(extra + [os.path.dirname(os.path.abspath(model_dir))]))
    else:
        model = os.environ.get(name_var) or env.GetProjectOption(option, "")  # noqa: F821
        model_dir = os.path.join(config.get("platformio", "lib_dir"), model)
        if model and not os.path.isfile(os.path.join(model_dir, f"{model}_model.h")):
            fail(f"{model_dir}/{model}_model.h does not exist: generate the {role} library first with `tinyseek "
                 f"codegen` (model name {model!r}), or choose another one with {name_var}=<name>")
    if model and not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", model):
        fail(f"the {role} name {model!r} is not a lower-case C identifier; set {option} in platformio.ini or "
             f"{name_var} to the name given to `tinyseek codegen`")
    return model, model_dir if model else ""


model, header_dir = choose("model", "TINYSEEK_MODEL_DIR", "TINYSEEK_MODEL", "custom_tinyseek_model")
if not model:
    fail("no model chosen; set custom_tinyseek_model in platformio.ini or TINYSEEK_MODEL to the name given to "
         "`tinyseek codegen`")
# A wake-word model beside an audio model: the firmware's listener (`listen`, docs/firmware.md).
wake, _ = choose("wake-word model", "TINYSEEK_WAKE_MODEL_DIR", "TINYSEEK_WAKE_MODEL", "custom_tinyseek_wake_model")
if wake == model:
    fail(f"the wake-word model and the command model are both {model!r}; give the wake-word library its own name")

# The model's kind, so the interpreter compiles only that kind's input path (dut.c).
kind = re.search(r"#define %s_KIND_TEXT ([01])" % model.upper(),
                 open(os.path.join(header_dir, f"{model}_model.h"), encoding="utf-8").read())
if not kind:
    fail(f"{model}_model.h has no {model.upper()}_KIND_TEXT: regenerate the library with `tinyseek codegen`")

env.Append(CPPDEFINES=[  # noqa: F821
    ("DUT_MODEL_KIND_TEXT", kind.group(1)),
    ("TINYSEEK_MODEL_HEADER", '\\"%s_model.h\\"' % model),
] + ([("TINYSEEK_WAKE_HEADER", '\\"%s_model.h\\"' % wake)] if wake else []))
env["TINYSEEK_MODEL"] = model  # noqa: F821
deps = [d for d in config.get(section, "lib_deps", []) if d not in (model, wake)]
config.set(section, "lib_deps", "\n".join(deps + [model] + ([wake] if wake else [])))
