"""Entry point for ``python -m libvirt_vmotion``."""

import sys

if sys.argv[1:2] == ["agent"] and sys.argv[2:3] != ["check"]:  # `agent check` is the CLI's
    # The agent runs once per remote call (pre-flight makes several): skip
    # importing the whole CLI, only the agent and the operation it runs.
    from libvirt_vmotion.adapters.agent import main as agent_main

    raise SystemExit(agent_main(sys.argv[2:]))

from libvirt_vmotion.cli.app import main

raise SystemExit(main())
