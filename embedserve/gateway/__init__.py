"""The fleet's gateway: a stateless router and public edge in front of per-model worker processes."""
