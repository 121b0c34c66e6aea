"""Data in: read files, normalise every format to `Example` records, split, fingerprint."""
