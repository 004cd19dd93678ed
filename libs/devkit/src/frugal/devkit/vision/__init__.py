"""Dev-only vision tools: the labelled screen-share corpus and the scorer the bench and tests use."""
