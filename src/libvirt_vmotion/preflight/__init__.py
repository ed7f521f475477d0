"""vMotion step 1, pre-flight: may this guest move to that host, now, and how will it go.

- pure: ``facts`` (what the checks look at), ``result`` (verdicts and builders), one
  module per check family (``hosts``, ``guest``, ``versions``, ``hardware``, ``capacity``,
  ``network``, ``disks``), ``netcheck`` (bridge verdicts), ``registry`` (runs them in
  order), ``forecast`` and ``linkrate`` (how the migration will go);
- I/O: ``gather`` (facts from libvirt's remote API and our agent).
"""
