"""sessionrec: real-time session-based recommendations over HTTP, backed by Redis."""
