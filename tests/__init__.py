"""volsep test suite (run through tests/run)."""
