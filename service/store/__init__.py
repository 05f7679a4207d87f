"""Everything that talks to Redis: the key layout (keyspace), the Lua scripts (scripts), the
connection by URL (connection), the transport (transport), the read cache (readcache) and the state
the API reads and writes (state)."""
