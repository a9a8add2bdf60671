"""Model components: vision encoder, connectors, language model, the assembled VLM."""
