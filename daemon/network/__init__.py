"""Per-sandbox network accounting and egress limits (pyroute2)."""
