"""LLM providers behind one streaming interface (frugal.router.providers.base.LlmProvider)."""
