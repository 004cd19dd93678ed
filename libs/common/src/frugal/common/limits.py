"""Limits shared by the services that must agree on them (one definition, imported by both sides)."""

from __future__ import annotations

# Most history messages one turn may carry (TurnInput.history): the gateway sends at most this many (the
# most recent ones), the router refuses more with INVALID_ARGUMENT. Token-wise the router then trims the
# history oldest-first to the chosen model's context window and the tenant's limits.
MAX_HISTORY_MESSAGES = 128
