from platformio.public import PlatformBase


class TinyseekqemuPlatform(PlatformBase):
    """Boards that run under QEMU. Compilers and QEMU come from the system (apt), so PlatformIO
    installs no package for this platform and never asks the registry."""
