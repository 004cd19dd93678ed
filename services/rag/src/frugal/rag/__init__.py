"""Frugal Mesh rag service."""
