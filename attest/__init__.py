"""IMA measurement list, TPM quotes and per-sandbox integrity verdicts."""
