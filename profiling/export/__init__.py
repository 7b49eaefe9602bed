"""Ways out of an analysis: terminal text, CSV and JSON files, a Chrome trace, plots."""
