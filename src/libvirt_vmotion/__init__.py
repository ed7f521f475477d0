"""libvirt-vmotion: vMotion-style live migration for libvirt/QEMU-KVM hosts.

Nothing runs at import. The command line is :mod:`libvirt_vmotion.cli.app`
(``python -m libvirt_vmotion`` or ``vmotion``).
"""

from libvirt_vmotion.errors import ExitCode, VmotionError
from libvirt_vmotion.model import JobSample, MigrationOutcome, MigrationRequest

__all__ = ["ExitCode", "JobSample", "MigrationOutcome", "MigrationRequest", "VmotionError"]
__version__ = "0.1.0"
