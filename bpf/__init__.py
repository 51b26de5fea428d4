"""eBPF programs (bcc) and their loader: the only code that touches bcc."""
