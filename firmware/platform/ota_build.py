"""PlatformIO pre-script of update-enabled environments (qemu_m4_ota; docs/updates.md).

Runs after select_model.py. It writes ota_layout.h, the slot layout the firmware expects
(tinyseek.update.image.layout_header, from the model's int8 folder: TINYSEEK_INT8_DIR, or
models/<name>/int8, whose hash must be the library's), turns the updates on (TINYSEEK_OTA=1)
and links the generated library with --wrap=<name>_params,--wrap=<name>_api, so the model's
references to its weight table and API table land on the RAM copies ota.c points at the
active slot; the generated C itself is the same as in every other build.

A board whose region lies in the chip's own flash (qemu_m0_ota) names its key page
(custom_ota_key_page, the flash's last page), its sector (custom_ota_sector: whole flash pages)
and where its slots start (custom_ota_slot_base); the region is sized here for the model (the
slots' base and two slots) and ends at the key page, the linker keeps the program image below
it (__ts_ota_region, the board's linker script), and the port's flash controller erases and
programs it (TS_OTA_FLASH_PORT).
"""
import os
import re
import sys

Import("env")  # noqa: F821

sys.path.insert(0, os.path.join(env.subst("$PROJECT_DIR"), "tools"))  # noqa: F821
from tinyseek.quant.model import QuantModel  # noqa: E402
from tinyseek.update.image import layout_header, slot_image  # noqa: E402


def fail(message):
    sys.stderr.write("Error: " + message + "\n")
    env.Exit(1)  # noqa: F821


model = env["TINYSEEK_MODEL"]  # noqa: F821
kernel = env.GetProjectOption("custom_ota_kernel", "")  # noqa: F821
project = env.subst("$PROJECT_DIR")  # noqa: F821
int8_dir = os.environ.get("TINYSEEK_INT8_DIR") or os.path.join(project, "models", model, "int8")
if not os.path.isdir(int8_dir):
    fail(f"{int8_dir} does not exist: an update-enabled build needs the int8 model of '{model}' "
         "(set TINYSEEK_INT8_DIR to its folder)")
lib_dir = os.environ.get("TINYSEEK_MODEL_DIR") or os.path.join(project, "firmware", "lib", model)
header = open(os.path.join(lib_dir, f"{model}_model.h"), encoding="utf-8").read()
lib_hash = re.search(r'_MODEL_HASH "([0-9a-f]+)"', header).group(1)
qmodel = QuantModel.load(int8_dir)
if qmodel.model_hash() != lib_hash:
    fail(f"{int8_dir} holds model {qmodel.model_hash()}, the library {lib_dir} was generated from {lib_hash}: "
         "point TINYSEEK_INT8_DIR at the library's int8 model or regenerate it with `tinyseek codegen`")
out_dir = os.path.join(env.subst("$BUILD_DIR"), "ota")  # noqa: F821
os.makedirs(out_dir, exist_ok=True)
image = slot_image(qmodel, kernel)
text = layout_header(image)
path = os.path.join(out_dir, "ota_layout.h")
if not os.path.isfile(path) or open(path, encoding="utf-8").read() != text:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
key_page = env.GetProjectOption("custom_ota_key_page", "")  # noqa: F821
if key_page:
    key_page = int(key_page, 0)
    sector = int(env.GetProjectOption("custom_ota_sector", "4096"), 0)  # noqa: F821
    slot_base = int(env.GetProjectOption("custom_ota_slot_base", "0x10000"), 0)  # noqa: F821
    span = -(-(sector + len(image.data)) // sector) * sector  # a header sector and the image (ota.c SLOT_SPAN)
    region = slot_base + 2 * span
    base = key_page - region
    if base <= 0:
        fail(f"the update region for model '{model}' needs {region} bytes (two slots of its {len(image.data)}-byte "
             f"image), more than the {key_page} bytes of flash below the key page")
    env.Append(  # noqa: F821
        CPPDEFINES=[("TS_OTA_REGION_BASE", f"0x{base:X}u"), ("TS_OTA_REGION_BYTES", f"0x{region:X}u"),
                    ("TS_OTA_SECTOR", f"{sector}u"), ("TS_OTA_SLOT_BASE", f"0x{slot_base:X}u"),
                    ("TS_OTA_KEY_PAGE", f"0x{key_page:X}u"), ("TS_OTA_FLASH_PORT", 1)],
        LINKFLAGS=[f"-Wl,--defsym=__ts_ota_region=0x{base:X}"],
    )
env.Append(  # noqa: F821
    CPPPATH=[out_dir],
    CPPDEFINES=[("TINYSEEK_OTA", 1), ("TS_OTA_PARAMS", f"__wrap_{model}_params"),
                ("TS_OTA_PARAMS_REAL", f"__real_{model}_params"), ("TS_OTA_API", f"__wrap_{model}_api"),
                ("TS_OTA_API_REAL", f"__real_{model}_api")],
    LINKFLAGS=[f"-Wl,--wrap={model}_params,--wrap={model}_api"],
)
