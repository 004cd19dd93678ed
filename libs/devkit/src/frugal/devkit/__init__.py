"""Dev-only tools: provider emulators, the embedded dev stack, the local mesh runner, the pytest plugin,
the demo, evaluation corpora and router training. No runtime package imports this; no image contains it."""
