"""Pure logic, free of I/O: the entry layout and hashing (layout), the update rule (model), the
stream entry format (stream) and the scoring stages (scoring)."""
