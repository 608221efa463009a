"""Front doors: the OpenAI-compatible server, the legacy /generate server and the CLI."""
