"""A module-level function standing in for a library's replacement of ``print``."""

from __future__ import annotations

import sys
from typing import Any


def replacement_print(*args: Any, **kwargs: Any) -> None:
    sys.stdout.write(" ".join(str(a) for a in args) + "\n")
