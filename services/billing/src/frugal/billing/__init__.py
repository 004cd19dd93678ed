"""Frugal Mesh billing service."""
