"""Loaded into `st run` by the fuzz's config (`hooks`): one thread at a time parses source.

With two workers, both threads can ask hypothesis to describe a strategy's lambda, which it
does with `ast.parse`. CPython 3.11 keeps the parser's recursion depth in state the threads
share, so two parses at once fail with "AST constructor recursion depth mismatch": an error
in the fuzzer, not a finding about the API, so it is prevented here rather than tolerated in
the results.
"""

import ast
import threading
from typing import Any

_lock = threading.Lock()
_parse = ast.parse


def _one_at_a_time(*args: Any, **kwargs: Any) -> ast.AST:
    with _lock:
        return _parse(*args, **kwargs)


ast.parse = _one_at_a_time  # type: ignore[assignment]
