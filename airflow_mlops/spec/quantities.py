"""Kubernetes quantities as people write them, checked where they are written.

Kubernetes reads ``memory: 32`` as 32 bytes and ``memory: 512m`` as 0.512 bytes; the pod is then
killed at start, or never scheduled, far from the YAML line that caused it. So a memory or
storage size must carry a unit (``Ki Mi Gi Ti Pi Ei``: powers of 1024; ``k M G T P E``: powers
of 1000), and a near miss (``32``, ``16GB``, ``16gi``, ``512m``) gets a did-you-mean. Pure
string checks: cheap at DAG parse time.
"""

from __future__ import annotations

import re
from typing import Any

CPU = re.compile(r"^\d+(\.\d+)?m?$")
MEMORY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)$")
UNITS_HELP = "units are Ki, Mi, Gi, Ti (powers of 1024) or k, M, G, T (powers of 1000)"
_BINARY = {"k": "Ki", "m": "Mi", "g": "Gi", "t": "Ti", "p": "Pi", "e": "Ei"}


def _number(text: str) -> str:
    return text.removesuffix(".0")


def memory_problem(value: Any, what: str = "memory") -> str | None:
    """Why ``value`` is not a usable memory/storage quantity (with a did-you-mean), or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return f"expected a {what} quantity like '16Gi' or '512Mi', got {value!r}"
    text = str(value)
    if MEMORY.match(text):
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m:
        return f"expected a {what} quantity like '16Gi' or '512Mi', got {value!r}"
    number, unit = _number(m.group(1)), m.group(2)
    if not unit:
        n = float(number)
        if n >= 2**30:
            guess = f"{n / 2**30:.0f}Gi"
        elif n >= 2**20:
            guess = f"{n / 2**20:.0f}Mi"
        else:
            guess = f"{number}Gi" if n < 300 else f"{number}Mi"
        return (f"{what} {value!r} has no unit, which Kubernetes reads as {number} bytes "
                f"(did you mean '{guess}'?); {UNITS_HELP}")
    letter = unit[0].lower()
    if letter in _BINARY and unit.lower() in (letter, letter + "b", letter + "i", letter + "ib"):
        binary = _BINARY[letter]
        note = " ('m' is thousandths of a byte)" if unit == "m" else ""
        return f"{what} {value!r} is not a Kubernetes quantity{note} (did you mean '{number}{binary}'?); {UNITS_HELP}"
    return f"expected a {what} quantity like '16Gi' or '512Mi', got {value!r}; {UNITS_HELP}"


def cpu_problem(value: Any) -> str | None:
    """Why ``value`` is not a CPU quantity (``4``, ``0.5``, ``'500m'``), or None."""
    if value is None:
        return None
    if not isinstance(value, bool) and isinstance(value, (int, float)):
        value = str(value)
    if isinstance(value, str) and CPU.match(value):
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(m|M|millicores?)?\s*", value) if isinstance(value, str) else None
    if m:
        guess = m.group(1) + ("m" if m.group(2) else "")
        return f"expected a CPU quantity like 4, 0.5 or '500m', got {value!r} (did you mean '{guess}'?)"
    return f"expected a CPU quantity like 4, 0.5 or '500m', got {value!r}"
