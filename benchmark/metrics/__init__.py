"""Scoring: the declared per-organ metrics (one module each), FLARE22 rules, generative metrics."""
