"""Everything that talks to Redis: the key layout (keyspace), the Lua scripts (scripts), one
backend per topology chosen by URL (backends), the hot path's transport (transport), the read
cache (readcache), the small in-process caches (caches) and the state the API reads and writes
(state)."""
