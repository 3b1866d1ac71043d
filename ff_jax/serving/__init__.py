"""Serving: an exported bundle (export.py writes it, bundle.py verifies and loads it) and the
online recommendation server over it (server.py)."""
