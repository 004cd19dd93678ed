"""Shared foundation of the Frugal Mesh services: one place for each cross-cutting concern."""
