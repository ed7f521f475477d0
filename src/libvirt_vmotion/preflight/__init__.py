"""vMotion step 1, pre-flight: may this guest move to that host, now, and how will it go.

- pure: ``facts`` (what the checks look at, the one bridge model and tap rule included),
  ``domxml`` (the one domain-XML parser, NICs included), ``result`` (``CheckResult``, the
  one verdict type of ``check``, ``netcheck`` and the gate, and its builders), one
  module per check family (``hosts``, ``guest``, ``versions``, ``hardware``, ``capacity``,
  ``network``, ``disks``), ``netcheck`` (bridge verdicts), ``registry`` (runs them in
  order), ``forecast`` and ``linkrate`` (how the migration will go);
- I/O: ``gather`` (facts from libvirt's remote API and our agent; ``bridge_checks``, the
  network pre-flight both ``vmotion netcheck`` and the gate run).
"""
