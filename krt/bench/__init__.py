"""Benchmarks: they print figures; tests never assert wall-clock times."""
