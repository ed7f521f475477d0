"""Disk handover: shared or copied disks.

- pure: ``plan`` (which disk moves how, and the storage pre-flight checks);
- I/O: ``host`` (agent operations on a host: storage facts, pre-created images).
"""
