"""Writers of random-weight checkpoint folders in the official file formats (the weights are noise).

They make the built-in default (``default.py``: a tiny set created once under the cache directory) and the
benchmarks' full-size folders, so every loader path runs without the real downloads. Nothing the server loads
is initialised here at runtime: the folders are written once and then read back by the same loaders as real ones.
"""
