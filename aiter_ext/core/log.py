"""The package logger and a log-once helper (dispatch decisions and fallbacks are logged once per key)."""

from __future__ import annotations

import logging
import os
import threading

logger = logging.getLogger("aiter_ext")
if os.environ.get("AITER_EXT_LOG_LEVEL"):
    logger.setLevel(os.environ["AITER_EXT_LOG_LEVEL"].upper())
    if not logger.handlers:
        _handler = logging.StreamHandler()
        _handler.setFormatter(logging.Formatter("[aiter_ext %(levelname)s] %(message)s"))
        logger.addHandler(_handler)

_seen: set = set()
_lock = threading.Lock()


def log_once(key, message: str, level: int = logging.INFO) -> bool:
    """Log ``message`` the first time ``key`` is seen in this process; return whether it logged."""
    with _lock:
        if key in _seen:
            return False
        _seen.add(key)
    logger.log(level, message)
    return True
