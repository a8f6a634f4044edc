"""The fetch side: fills in flight, join-or-start, slices and derived encodings."""
