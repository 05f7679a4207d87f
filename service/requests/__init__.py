"""What a request may say, free of I/O and of HTTP: JSON in, typed values out, or ``Invalid``
naming the field and the fix. The API answers ``Invalid`` with a 400 (``service/api``); the
offline tools that read the same shapes from files (``sessionrec catalog``) refuse in one
line. Pure functions, so they are unit-tested directly and the fuzz tests can hammer them."""
