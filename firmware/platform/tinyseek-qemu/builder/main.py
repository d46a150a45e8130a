"""Build script of the tinyseek-qemu platform: Debian's cross compilers from PATH, one linker
script per machine, and an `upload` target that boots the image in QEMU with the serial port on
a local TCP socket (emulated boards) or runs the ini's `upload_command` (real boards)."""
import os
import shutil
import subprocess
import sys

from SCons.Script import AlwaysBuild, Default, DefaultEnvironment  # pylint: disable=import-error

env = DefaultEnvironment()
board = env.BoardConfig()
platform_dir = env.PioPlatform().get_dir()

APT_PACKAGES = {
    "arm-none-eabi-": "gcc-arm-none-eabi libnewlib-arm-none-eabi",
    "riscv64-unknown-elf-": "gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf",
    "qemu-system-arm": "qemu-system-arm",
    "qemu-system-riscv32": "qemu-system-misc",
    "xtensa-lx106-elf-": "gcc-xtensa-lx106 picolibc-xtensa-lx106-elf",
    "qemu-system-xtensa": "qemu-system-misc",
}

prefix = board.get("build.toolchain_prefix")
if shutil.which(prefix + "gcc") is None:
    sys.stderr.write(
        f"Error: the cross compiler {prefix}gcc is not on PATH; install it with\n"
        f"  sudo apt-get install -y {APT_PACKAGES[prefix]}\n")
    env.Exit(1)

env.Replace(
    AR=prefix + "gcc-ar",
    AS=prefix + "gcc",
    CC=prefix + "gcc",
    CXX=prefix + "g++",
    GDB=prefix + "gdb",
    OBJCOPY=prefix + "objcopy",
    RANLIB=prefix + "gcc-ranlib",
    SIZETOOL=prefix + "size",
    PROGNAME="firmware",
    PROGSUFFIX=".elf",
    SIZEPROGREGEXP=r"^(?:\.text|\.data|\.rodata|\.ARM\.exidx)\s+(\d+).*",
    SIZEDATAREGEXP=r"^(?:\.data|\.bss|\.stack)\s+(\d+).*",
    SIZECHECKCMD="$SIZETOOL -A -d $SOURCES",
    SIZEPRINTCMD="$SIZETOOL -B -d $SOURCES",
)

emulated = board.get("upload.protocol") == "qemu"
cpu_flags = list(board.get("build.cpu_flags"))
libc_specs = list(board.get("build.libc_specs"))  # the C library's include and link setup
env.Append(
    ASFLAGS=cpu_flags,
    ASPPFLAGS=["-x", "assembler-with-cpp"],
    CCFLAGS=cpu_flags + libc_specs + ["-O2", "-g", "-ffunction-sections", "-fdata-sections", "-Wall", "-Wextra"],
    CFLAGS=["-std=c99"],
    CXXFLAGS=["-fno-exceptions", "-fno-rtti"],
    CPPDEFINES=[
        ("TS_BOARD_NAME", '\\"%s\\"' % board.get("build.mcu")),
        ("TS_CPU_NAME", '\\"%s\\"' % board.get("build.cpu")),
        ("TS_CLOCK_HZ", board.get("build.f_cpu").rstrip("L") + "UL"),
        ("TS_UART_BASE", board.get("build.uart_base") + "UL"),
        ("TS_EMULATED", 1 if emulated else 0),
    ] + [tuple(d.split("=", 1)) if "=" in d else d for d in board.get("build.defines", [])],
    LINKFLAGS=cpu_flags + [
        "-nostartfiles", *libc_specs, "-Wl,--gc-sections",
        "-Wl,-Map=" + os.path.join("$BUILD_DIR", "firmware.map"),
        "-L" + os.path.join(platform_dir, "ldscripts"),
    ],
    LIBS=["m", "gcc"],
)
if not env.get("LDSCRIPT_PATH"):
    env.Replace(LDSCRIPT_PATH=os.path.join(platform_dir, "ldscripts", board.get("build.ldscript")))

target_elf = env.BuildProgram()
AlwaysBuild(env.Alias("nobuild", target_elf))
Default([target_elf, env.Alias("size", target_elf, env.VerboseAction("$SIZEPRINTCMD", "Calculating size $SOURCE"))])


def _tcp_port() -> int:
    raw = str(env.subst("$UPLOAD_PORT") or "").strip()
    raw = raw.rsplit(":", 1)[-1] if raw else "5555"
    if not raw.isdigit():
        sys.stderr.write(f"Error: upload_port {raw!r} must be a TCP port number or socket://127.0.0.1:PORT\n")
        env.Exit(1)
    return int(raw)


def run_qemu(target, source, env):  # pylint: disable=unused-argument
    """Boot the image; the serial port waits for one client, so the boot banner is kept."""
    system = board.get("build.qemu_system")
    if shutil.which(system) is None:
        sys.stderr.write(f"Error: {system} is not installed; install it with\n"
                         f"  sudo apt-get install -y {APT_PACKAGES[system]}\n")
        return 1
    extra = list(board.get("build.qemu_args", []))
    if board.get("build.qemu_console", "serial") == "stdio":
        # No UART on this machine: the firmware's console is semihosting on QEMU's stdin/stdout.
        cmd = [system, "-M", board.get("build.qemu_machine"), *extra, "-display", "none", "-monitor", "none",
               "-serial", "none", "-icount", "shift=0,align=off,sleep=off", "-semihosting", "-kernel", str(source[0])]
        print("The firmware's console is this terminal: type commands, e.g. name% info% (quit% stops QEMU).")
    else:
        port = _tcp_port()
        cmd = [system, "-M", board.get("build.qemu_machine"), *extra, "-nographic", "-monitor", "none",
               "-serial", f"tcp:127.0.0.1:{port},server=on,wait=on,nodelay=on",
               "-icount", "shift=0,align=off,sleep=off",
               "-semihosting-config", "enable=on,target=native",
               "-kernel", str(source[0])]
        if board.get("build.arch") == "riscv":
            cmd[3:3] = ["-bios", "none"]
        print("QEMU waits for a client on the serial port: connect with\n"
              f"  pio device monitor -p socket://127.0.0.1:{port}\n"
              "and stop it with the command quit% (or Ctrl-C here).")
    print(" ".join(cmd))
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


if emulated:
    env.AddPlatformTarget("upload", target_elf, env.VerboseAction(run_qemu, "Starting QEMU"), "Upload")
else:
    # A real board: a raw image beside the ELF (st-flash writes it), uploaded by the ini's
    # `upload_command` (upload_protocol = custom: OpenOCD or stlink-tools from the system).
    target_bin = env.Command(os.path.join("$BUILD_DIR", "firmware.bin"), target_elf,
                             env.VerboseAction("$OBJCOPY -O binary $SOURCE $TARGET", "Building $TARGET"))
    Default(target_bin)

    def upload_missing(target, source, env):  # pylint: disable=unused-argument
        sys.stderr.write("Error: set upload_protocol = custom and upload_command in platformio.ini "
                         "(docs/firmware.md shows OpenOCD and st-flash commands)\n")
        return 1

    action = env.VerboseAction("$UPLOADCMD", "Uploading $SOURCE") if env.get("UPLOADCMD") else upload_missing
    env.AddPlatformTarget("upload", target_elf, action, "Upload")
