"""Asset URIs made from the places users name: data folders, object-storage URIs, model names.

Airflow stores an Asset's URI as ASCII (``AssetModel`` refuses anything else when the DAG
processor persists the DAGs, and then stores *none* of the file's DAGs) and drops everything after
a ``#`` (a URI fragment) when it normalises one. A folder such as ``/srv/Équipe/données`` or
``/srv/team #1/data`` is a fine place for data, so the URI percent-encodes it (RFC 3986, UTF-8):
``file:///srv/%C3%89quipe/donn%C3%A9es``, ``file:///srv/team%20%231/data``. Two different folders
never share a URI, and every URI Airflow is handed is one it stores as it is.
"""

from __future__ import annotations

from urllib.parse import quote

# What stays as written in a URI's path: RFC 3986's unreserved and sub-delimiter characters, ':'
# and '@' (pchar) and '/'. '%' is kept in a URI the user wrote (already percent-encoded), encoded
# in a local path (a literal '%' in a folder's name).
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def asset_uri(location: str) -> str:
    """The Asset URI of a data location.

    ``location``: an absolute local path (``/data/churn``) or a URI (``s3://bucket/key``,
    ``file:///data``). Returns ``file://`` + the percent-encoded path for a local path; for a URI,
    its scheme and host as written and its path percent-encoded where it is not ASCII or holds
    ``#``, ``?`` or spaces (``%XX`` sequences already there are kept).
    """
    scheme, sep, rest = location.partition("://")
    if not sep:
        return "file://" + quote(location, safe=_PATH_SAFE)
    return f"{scheme}://{quote(rest, safe=_PATH_SAFE + '%')}"


def asset_name_part(text: str) -> str:
    """``text`` as part of an Asset name or URI host: percent-encoded where it is not ASCII or holds
    characters a URI gives a meaning to (``/``, ``#``, ``?``, ``@``, ``:``, spaces)."""
    return quote(text, safe="-._~!$&'()*+,;=")
