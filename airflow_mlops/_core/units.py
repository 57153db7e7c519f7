"""Units: Kubernetes quantities (CPU cores, bytes) parsed and checked, and durations as people
write them. The one place each is parsed.

Kubernetes quantities as people write them, checked where they are written.

Kubernetes reads ``memory: 32`` as 32 bytes and ``memory: 512m`` as 0.512 bytes; the pod is then
killed at start, or never scheduled, far from the YAML line that caused it. So a memory or
storage size must carry a unit (``Ki Mi Gi Ti Pi Ei``: powers of 1024; ``k M G T P E``: powers
of 1000), and a near miss (``32``, ``16GB``, ``16gi``, ``512m``) gets a did-you-mean. Pure
string checks: cheap at DAG parse time.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

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


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_UNITS = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
          "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_CPU_HELP = "expected a CPU quantity like 4, 0.5 or '500m'"
_MEMORY_HELP = "expected a memory quantity like '16Gi' or '512Mi'"


def _split(value: str | int | float, allowed: tuple[str | None, ...] | None, help_text: str) -> tuple[str, str | None]:
    """(number, unit) of a Kubernetes quantity written as text, the unit one of ``allowed`` (None:
    any). Raises ValueError ``"<help_text>, got <value>"`` otherwise."""
    m = None if isinstance(value, bool) else _QUANTITY.match(str(value).strip())
    if not m or (allowed is not None and m.group(2) not in allowed):
        raise ValueError(f"{help_text}, got {value!r}")
    return m.group(1), m.group(2)


def _plain_number(value: Any, what: str) -> bool:
    """Whether ``value`` is an int or float (not a bool), refusing a negative one."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"expected a {what} quantity ≥ 0, got {value!r}")
        return True
    return False


def parse_cpu(value: str | int | float) -> float:
    """Kubernetes CPU quantity → cores: ``'4'`` → 4, ``'500m'`` → 0.5."""
    if _plain_number(value, "CPU"):
        return float(value)
    number, unit = _split(value, (None, "m"), _CPU_HELP)
    return float(number) / (1000 if unit else 1)


def parse_bytes(value: str | int | float) -> int:
    """Kubernetes memory quantity → bytes: ``'16Gi'`` → 17179869184, ``'1G'`` → 10^9, ``1024`` → 1024."""
    if _plain_number(value, "memory"):
        return int(value)
    number, unit = _split(value, tuple(u for u in _UNITS), _MEMORY_HELP)
    return int(float(number) * _UNITS[unit])


def parse_quantity(value: str | int | float) -> Decimal:
    """Any Kubernetes quantity → its exact value: ``'500m'`` → 0.5, ``'16Gi'`` → 17179869184, ``2`` → 2.
    Raises ValueError naming the value when it is not one."""
    number, unit = _split(value, None, "expected a Kubernetes quantity like 4, '500m' or '16Gi'")
    return Decimal(number) * (Decimal("0.001") if unit == "m" else Decimal(_UNITS[unit]))


def format_cpu(value: Decimal) -> str:
    """Cores → the shortest CPU quantity: 2 → ``'2'``, 0.5 → ``'500m'``."""
    millis = int(value * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_memory(value: Decimal) -> str:
    """Bytes → the largest binary unit that divides them: 17179869184 → ``'16Gi'``."""
    for unit in ("Ti", "Gi", "Mi", "Ki"):
        if value % _UNITS[unit] == 0:
            return f"{int(value // _UNITS[unit])}{unit}"
    return str(int(value))


def memory_gib(value: str | int | float) -> float:
    """A memory quantity in GB as billed here (GiB)."""
    return parse_bytes(value) / 2**30


def parse_duration(v: Any) -> Any:
    """Accept seconds, ``'90s'``, ``'5m'``, ``'2h'``, ``'1d'``, ``'2w'`` and ISO 8601 (pydantic's own)."""
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*", v)
        if m:
            n, unit = float(m.group(1)), m.group(2)
            return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[unit]: n})
    return v


# A duration as people write it (parse_duration), for every pydantic field: no model wires its own.
Duration = Annotated[timedelta, BeforeValidator(parse_duration), Field(json_schema_extra={"examples": ["5m", 300, "PT5M"]})]


def human_bytes(n: float) -> str:
    """``n`` bytes for a log line: ``512 B``, ``1.5 KiB`` … ``3.0 TiB`` (powers of 1024)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def gib(n: float | None, digits: int = 1) -> str:
    """``n`` bytes in GiB for people: ``gib(3 * 2**29)`` is ``1.5 GiB``; ``n/a`` for None."""
    return "n/a" if n is None else f"{n / 2**30:.{digits}f} GiB"
