"""Backends, each a small module found through a registry keyed by URI scheme (see ``registry.py``)."""
