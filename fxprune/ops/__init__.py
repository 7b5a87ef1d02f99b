"""Op rules: how each op's axes correspond and what its rewrite changes (see table.py)."""
