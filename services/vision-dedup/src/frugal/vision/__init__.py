"""Frugal Mesh vision-dedup service."""
