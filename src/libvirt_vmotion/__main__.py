"""Entry point for ``python -m libvirt_vmotion``."""

from libvirt_vmotion.cli import main

raise SystemExit(main())
