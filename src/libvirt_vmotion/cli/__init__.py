"""Command line: argparse, rendering, and exit codes only.

- ``app``: ``vmotion`` / ``python -m libvirt_vmotion`` (``main``), ``migrate``, ``status``,
  ``cancel``, ``netcheck``, ``lab`` and ``bench`` dispatch;
- ``checks``: ``check`` and ``hooks``, and the pre-flight gate ``migrate`` runs first;
- ``argtypes``: numbers typed on the command line; ``report``: the migration report.
"""
