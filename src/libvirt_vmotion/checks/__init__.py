"""The pre-flight checks, one family per module; ``preflight`` runs them in order.

- ``result``: pure. ``Verdict``, ``CheckResult`` and the builders every check uses.
- ``facts``: pure. The frozen facts the checks look at (gathered by ``libvirt_vmotion.facts``).
- ``hosts``: pure. The pair of hosts: distinct machines (``same-host``), our agent
  answering on the destination (``dest-agent``).
- ``guest``: pure. The guest's state: running (``guest-running``), no job in progress
  (``no-job-running``).
- ``versions``: pure. libvirt and QEMU versions (``libvirt-version``, ``qemu-version``,
  ``tcg-dirty-tracking``) and ``FEATURES``, the one table of what each feature needs.
- ``hardware``: pure. The guest's virtual hardware on the destination's QEMU (``cpu-compat``,
  ``machine-type``, ``emulator``, ``device-models``, ``passthrough-devices``).
- ``capacity``: pure. Room on the destination (``dest-memory``, ``dest-vcpus``,
  ``dest-hugepages``, ``inbound-slots``).
- ``network``: pure. NIC attachments (``network``), uplink port flags (``bridge-ports``),
  and ``netcheck``'s bridge verdicts under their own names.
- ``disks``: pure. Each disk reachable on the destination or copied (``storage``); the disk
  handover's own checks live in ``libvirt_vmotion.storage``.
"""
