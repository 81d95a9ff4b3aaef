"""The volsep command line (cliff)."""
