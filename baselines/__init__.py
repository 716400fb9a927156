"""Baseline methods, each registered through the `labelbench.methods` entry-point group."""
