"""Recorded sessions for whole-session cost: definitions, deterministic media, transcripts with word times."""
