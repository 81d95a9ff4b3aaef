"""The image formats volsep imports, by their user-facing names.

A module of its own so that the CLI can offer them as choices without
importing the inspection code (oslo.utils' format_inspector compiles
hundreds of regular expressions at import)."""

# qemu-img calls VHD "vpc" (see images.QEMU_NAMES).
FORMATS = ('raw', 'qcow2', 'vmdk', 'vhd', 'vhdx', 'vdi')
