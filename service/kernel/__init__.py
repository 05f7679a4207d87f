"""One facade over the request-time kernel: the compiled extension (``_native``, built from
``native/*.c`` by ``pip install``) or its pure reference (``reference.py``), same functions,
same results.

The compiled kernel is used when it was built; the reference when it was not (a machine without
a C compiler: the package still installs and serves, slower, and says so once) or when
``SESSIONREC_KERNEL=reference`` asks for it (the test suite runs both ways). Callers use the
module's functions (``kernel.score(...)``), looked up at call time, so ``use()`` switches every
caller at once.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

from service.kernel import reference

ENV = "SESSIONREC_KERNEL"

native: ModuleType | None
try:
    from service.kernel import _native as native
except ImportError:  # built without a C compiler, or a source checkout never installed
    native = None


class KernelWarning(RuntimeWarning):
    """Serving on the pure reference: correct, but each request costs several times more CPU."""


def _chosen() -> str:
    wanted = os.environ.get(ENV, "").strip().lower()
    if wanted not in ("", "native", "reference"):
        raise ValueError(f"{ENV} must be 'native' or 'reference', not {wanted!r}")
    if wanted == "reference":
        return "reference"
    if native is None:
        warnings.warn("sessionrec: the compiled kernel is not built (no C compiler when it was "
                      "installed?); serving on the pure reference, several times slower per "
                      "request. Install a C compiler and reinstall to build it.", KernelWarning,
                      stacklevel=3)
        if wanted == "native":
            raise ImportError(f"{ENV}=native but service.kernel._native is not built")
        return "reference"
    return "native"


def use(name: str) -> None:
    """Route every kernel function to ``native`` or ``reference`` (tests switch both ways)."""
    global NAME, reseed, query, neighbours, score, candidates, rank, relative, hashes
    global lookup, insert, select, first_absent, objects_get, objects_put, objects_pop, mget, pack
    global arrange, rows, rows_json, checked_hashes, gather, reorder, sequence_values, ranked
    impl = native if name == "native" else reference
    if impl is None:
        raise ImportError("service.kernel._native is not built")
    NAME = name
    reseed, query, neighbours, score = impl.reseed, impl.query, impl.neighbours, impl.score
    candidates, rank, relative = impl.candidates, impl.rank, impl.relative
    hashes = impl.hashes
    lookup, insert, mget, pack = impl.lookup, impl.insert, impl.mget, impl.pack
    select, first_absent = impl.select, impl.first_absent
    objects_get, objects_put, objects_pop = impl.objects_get, impl.objects_put, impl.objects_pop
    arrange, rows, rows_json = impl.arrange, impl.rows, impl.rows_json
    checked_hashes = impl.checked_hashes
    gather, reorder, sequence_values = impl.gather, impl.reorder, impl.sequence_values
    ranked = impl.ranked


NAME = "reference"
reseed = reference.reseed
query = reference.query
neighbours = reference.neighbours
score = reference.score
candidates = reference.candidates
rank = reference.rank
relative = reference.relative
hashes = reference.hashes
lookup = reference.lookup
insert = reference.insert
select = reference.select
first_absent = reference.first_absent
objects_get = reference.objects_get
objects_put = reference.objects_put
objects_pop = reference.objects_pop
mget = reference.mget
pack = reference.pack
arrange = reference.arrange
rows = reference.rows
rows_json = reference.rows_json
checked_hashes = reference.checked_hashes
gather = reference.gather
reorder = reference.reorder
sequence_values = reference.sequence_values
ranked = reference.ranked
use(_chosen())

FUNCTIONS = ("reseed", "query", "neighbours", "score", "candidates", "rank", "relative",
             "hashes", "lookup", "insert", "select", "first_absent", "objects_get", "objects_put",
             "objects_pop", "mget", "pack", "arrange", "rows", "rows_json", "checked_hashes",
             "gather", "reorder", "sequence_values", "ranked")
"""Every function of the kernel: each has a compiled and a reference implementation."""
