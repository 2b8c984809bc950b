"""LLM backends: one protocol (``base``), vLLM (offline or async engine), an OpenAI-compatible client, a scripted
fake, and the factory that picks one per stage (``factory``). Importing ``tasks.llm`` loads none of them."""
