"""Replay: a recorded session (text turns, WAV turns, a screen share) through the agent's own code paths."""
