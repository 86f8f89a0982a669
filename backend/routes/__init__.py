"""HTTP handlers, grouped by what they serve."""
