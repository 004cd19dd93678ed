"""Frugal Mesh router service."""
