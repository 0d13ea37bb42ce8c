"""LLM backends behind one interface: the embedded model, or any OpenAI-compatible server."""
