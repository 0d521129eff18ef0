"""Model declarations, sources, formats and archives: the importable package behind `make model` and `make archives`."""
