"""Frugal Mesh media gateway: the LiveKit agent worker (and its replay mode)."""
