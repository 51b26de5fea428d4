"""Generated gRPC code for hostwarden.v1 (see proto/generate.py)."""
