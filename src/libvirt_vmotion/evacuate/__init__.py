"""Empty a host of its guests: placement and order (plan, pure), the moves (run)."""
