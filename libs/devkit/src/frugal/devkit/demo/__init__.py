"""Dev-only: the `make demo` run against a local mesh (`session`) and the synthetic demo media (`synth`)."""
