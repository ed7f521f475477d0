"""Observers that watch the guest from outside while it migrates (``--ping``, ``--workload``)."""
