"""``moonshard bench``: benchmarks, each measured beside its baseline in the same run."""
