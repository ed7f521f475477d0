"""One migration as one object.

``core``: the ``Session`` and its ports (pure orchestration over our own Protocols);
``gate``: pre-flight at the edge; ``wiring``: the real collaborators (``open_session``).
"""
