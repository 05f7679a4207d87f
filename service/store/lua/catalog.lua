-- Record a catalogue change for the serve processes' copies (service/store/mirror.py).
-- KEYS[1] version counter, KEYS[2] change log (a stream); ARGV[1] the log's length cap,
-- ARGV[2] the changed items' hashes, hex, concatenated. The version and the entry move
-- together, so a reader that finds the next entry's version is not its own plus one knows it
-- missed entries (trimmed, or a Redis that came back empty) and reads the catalogue whole.
local version = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[1], '*', 'v', version, 'items', ARGV[2])
return version
