"""Local emulators of provider HTTP APIs (Gemini, Anthropic, Voyage, Cohere, ...).

Each emulator speaks the provider's real wire format so that tests drive the official SDK, pointed at
the emulator with its base-URL option. Emulators are scriptable (latency, errors, fixed replies) and
record the requests they received.
"""
