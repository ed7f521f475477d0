"""The edges: everything that talks to libvirt, other hosts or disk state.

- ``virt``: the libvirt adapter, the only module that imports ``libvirt``;
- ``agent``: our package on another host, over ssh (or locally), one operation a call;
- ``history``: what earlier migrations between two hosts achieved (SQLite);
- ``linkprobe``: the migration link measured between two hosts' agents.
"""
