"""ckms: build and install out-of-tree kernel modules for every kernel."""

__version__ = "0.1.0"
