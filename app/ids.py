"""Public ids: a readable prefix and 24 random hex digits."""

import secrets
import time


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> float:
    return time.time()
