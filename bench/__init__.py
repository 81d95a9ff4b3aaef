"""volsep benchmarks (run through bench/run)."""
