#!/bin/sh
# Installs the Debian/Ubuntu packages tinyseek needs (compilers, cross compilers, QEMU; the
# AArch64 and ARMv7 (armhf) cross compilers and QEMU user mode build and run the Linux NEON kernels;
# espeak-ng, flite and sox synthesise the built-in spoken commands of task.kind = "audio").
# As root it installs what is missing; otherwise it prints the exact command to run.
set -e
PACKAGES="gcc g++ make python3-venv python3-dev gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm gcc-riscv64-unknown-elf picolibc-riscv64-unknown-elf qemu-system-misc gcc-xtensa-lx106 picolibc-xtensa-lx106-elf gcc-aarch64-linux-gnu libc6-dev-arm64-cross libstdc++6-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user espeak-ng flite sox"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
  echo "installing system packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends $missing >/dev/null
else
  echo "missing system packages:$missing"
  echo "install them with:  sudo apt-get update && sudo apt-get install -y$missing"
  exit 1
fi
