"""The two-host namespace lab: switch, two libvirt hosts, a client, and the test guest."""
