"""cgroup v2 hierarchy for sandboxes and tool calls: the only code that touches cgroupfs."""
