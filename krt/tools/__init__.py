"""Operator tools that talk to a running server: client, warmup, tpm (and the bench sweep)."""
