"""vMotion step 2, prepare and reserve: memory, vCPUs and an inbound slot on the destination.

- ``store``: the SQLite reservation store on each host and the arithmetic over it;
- ``hook``: libvirt's qemu hook entry, which enforces reservations (never calls libvirt);
- ``hostops``: the agent operations a host answers for pre-flight and reservations.
"""
