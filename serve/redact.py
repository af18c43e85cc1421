"""What an error text may show a client: no paths, pids, IP addresses, Ray actor/node/task ids or
tracebacks. ``public_text`` is the last step before any error text leaves the server (job records,
``reload_error``); the log keeps the original under an error id (``error_id``).

Applied to texts that are already meant for users (``VideoReadError``'s, ``EncoderError``'s ...),
it keeps their meaning: a path becomes its file name (``/srv/jobs/x/input.mkv`` -> ``input.mkv``),
``pid=1234`` becomes ``pid=?``, an IP address ``<ip>``, a long hex id ``<id>``.
"""
from __future__ import annotations

import ipaddress
import re
import secrets

MAX_PUBLIC_CHARS = 300
# an absolute path: a "/" (or "C:\\") not preceded by a word character, dot or slash (not "24000/1001")
_PATH = re.compile(r"(?<![\w./\\])(?:[A-Za-z]:\\|~?/)[^\s'\"<>|,;()\[\]{}]*")
_KEYED = re.compile(r"\b(pid|ip|actor_id|node_id|worker_id|task_id|job_id|address|host|hostname)=[^\s,;)\]]+")
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b")
_IPV6_CANDIDATE = re.compile(r"\[[0-9A-Fa-f:.]+\]|(?<![\w:])[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*(?![\w:])")
_HEX_ID = re.compile(r"\b[0-9a-fA-F]{16,}\b")


def _ipv6(match: re.Match) -> str:
    try:
        ipaddress.IPv6Address(match.group(0).strip("[]"))
    except ValueError:
        return match.group(0)
    return "<ip>"


def error_id() -> str:
    return secrets.token_hex(6)


def public_text(text: str) -> str:
    """``text`` without paths (file names stay), pids, hosts, ids or a traceback; one line, at
    most ``MAX_PUBLIC_CHARS`` characters."""
    text = text.split("Traceback (most recent call last)")[0]
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    text = _PATH.sub(lambda m: m.group(0).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or "/", text)
    text = _KEYED.sub(lambda m: f"{m.group(1)}=?", text)
    text = _IPV4.sub("<ip>", text)
    text = _IPV6_CANDIDATE.sub(_ipv6, text)
    text = _HEX_ID.sub("<id>", text)
    return text if len(text) <= MAX_PUBLIC_CHARS else text[: MAX_PUBLIC_CHARS - 3] + "..."
