"""vMotion step 8, network cutover: announce the guest from the destination, verify.

- pure: ``frames`` (RARP, gratuitous ARP, unsolicited NA as bytes);
- I/O: ``announce`` (the announcer on the destination, the cutover around switchover),
  ``bridge`` (Linux bridge facts and forwarding database on this host).
"""
