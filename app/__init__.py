"""Applications over the engine: the desktop canvas, the CLI and the HTTP API."""
