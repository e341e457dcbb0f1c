"""`make bench`: figures measured side by side in one run, each against its goal."""
