"""Route handlers: thin translations between a wire format (TEI or OpenAI) and the shared pipeline."""
