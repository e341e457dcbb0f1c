"""What the CLI prints: pure functions from map contents to lines (one file per noun)."""
