"""Stage 4, submission: DCASE output and meta files, the package, and its validator."""
