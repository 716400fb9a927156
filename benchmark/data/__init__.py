"""Data: reading CT data sets, the built-in phantom, the slice store and the cache they live in."""
