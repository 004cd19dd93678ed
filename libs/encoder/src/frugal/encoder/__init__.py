"""Shared local text encoder."""
