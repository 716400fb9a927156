"""Built-in protocols: the `*.toml` files in this folder, installed as the package
`benchmark.protocols` (pyproject's `package-dir`) and read through `importlib.resources`, so
an installed package (editable or not) reads the same files as a checkout. No code here.
"""
