"""Policy: TOML schema, intent resolution, and the enforcement ladder (decisions as data)."""
