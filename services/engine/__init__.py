"""The engine: graphs, sessions, one run of a session, output cache, node context, events, queue."""
