"""Release: model versions (GGUF export) and their deployment to Ollama."""
