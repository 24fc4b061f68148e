"""Journal and load values as the short text the report shows.

Every value comes from plain JSON that may be missing or of the wrong type (a crashed run, an
older journal), so the formatters of optional values show "—" rather than fail.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

RAW_OUTPUT_LIMIT = 20_000
SUMMARY_LIMIT = 160


def is_number(value: Any) -> bool:
    """A JSON number: Python's bool is an int, but ``true`` is no time or count."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def fmt_json(value: Any) -> str:
    """Indented JSON, cut short so one huge probe output cannot swamp the page."""
    text = json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)
    if len(text) > RAW_OUTPUT_LIMIT:
        text = text[:RAW_OUTPUT_LIMIT] + f"\n… ({len(text) - RAW_OUTPUT_LIMIT:,} more characters)"
    return text


def fmt_summary(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, Mapping):
        text = ", ".join(f"{k}={fmt_compact(v)}" for k, v in value.items())
    else:
        text = fmt_compact(value)
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1] + "…"


def fmt_compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


def fmt_mapping(value: Any) -> str:
    if not value:
        return "—"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={fmt_compact(v)}" for k, v in value.items())
    return fmt_compact(value)


def fmt_exception(exception: Any) -> str:
    """The last line of a formatted traceback is the one a reader needs."""
    if not exception:
        return ""
    text = "".join(str(x) for x in exception) if isinstance(exception, list) else str(exception)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def fmt_wall(t: Any) -> str:
    if not is_number(t):
        return "—"
    return datetime.fromtimestamp(float(t), tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def fmt_rel(t: Any, origin: float) -> str:
    return f"{float(t) - origin:+.1f} s" if is_number(t) else "—"


def fmt_duration(seconds: Any) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.0f} s"


def fmt_latency(seconds: Any) -> str:
    if not is_number(seconds) or math.isnan(seconds):
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def fmt_share(share: Any) -> str:
    if not is_number(share) or math.isnan(share):
        return "—"
    text = f"{share * 100:.3f}".rstrip("0").rstrip(".")
    return f"{text}%"


def fmt_number(value: Any) -> str:
    if not is_number(value) or math.isnan(value):
        return "—"
    return f"{value:,.1f}".removesuffix(".0")


def fmt_int(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "?"
