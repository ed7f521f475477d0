"""``vmotion bench``: our migrations against plain ``virsh migrate`` and the physical limit.

- ``matrix``: pure. Parameters and presets, the cells of the matrix, figures of
  one run, medians/worst per cell, ratios, the physical limit, ETA.
- ``render``: pure. The results document (JSON) and the Markdown summary.
- ``plots``: I/O. PNG plots with matplotlib (the optional ``bench`` extra).
- ``runner``: I/O. Drives the namespace lab: boots the guest, sets the
  workload's dirty rate, runs each tool from the client namespace, collects
  figures, writes the results folder.
"""
