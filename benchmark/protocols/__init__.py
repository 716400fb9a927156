"""Built-in protocols: the `*.toml` files next to this file, shipped as package data.

They are found through `importlib.resources`, so an installed package (editable or not)
reads the same files as a checkout. This package holds no code.
"""
