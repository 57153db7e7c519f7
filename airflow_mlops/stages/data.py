"""Reading and writing datasets (pandas) — shared by the stages. A dataset is a local file or an
object in object storage (``_core.storage``); a folder of part files as Spark writes them reads as
one dataset either way."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_mlops._core.errors import StageFailed
from airflow_mlops._core.storage import is_remote, location_of, open_location

if TYPE_CHECKING:
    import pandas as pd

    from airflow_mlops.spec.models import DataInput


def infer_format(path: str, given: str | None) -> str:
    if given:
        return given
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".parquet"):
        return suffix[1:]
    if suffix == ".pq":
        return "parquet"
    raise ValueError(f"cannot tell the format of '{path}' from its extension; set 'format: csv' or 'format: parquet'")


def read_dataset(path: str, fmt: str | None = None, conn_id: str | None = None) -> "pd.DataFrame":
    """A file or object, or a folder of part files as Spark writes them. ``path``: a local path or
    a URI (read through ``conn_id``, default the scheme's connection). Raises StageFailed when a
    local path is not there, saying where this worker looked: a file another worker wrote is on
    that worker's disk."""
    import pandas as pd

    fmt = infer_format(path, fmt)
    where = open_location(path, conn_id)
    try:
        if where.is_dir():
            parts = sorted(where.glob(f"part-*.{fmt}" if fmt == "csv" else "part-*"))
            frames = [_read(p, fmt) for p in parts if not p.name.endswith(".crc")]
            return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return _read(where, fmt)
    except FileNotFoundError as exc:
        if is_remote(path):
            raise StageFailed(f"no object at {path}: {exc}") from None
        raise StageFailed(
            f"no file at {path} on this worker ({socket.gethostname()}). If another task wrote it, it is on that "
            "worker's disk: workers that share no disk need data_dir on object storage (s3://bucket/prefix) or on "
            "a volume every worker mounts (docs: \"Running on your deployment\")") from None


def _read(where: Any, fmt: str) -> "pd.DataFrame":
    import pandas as pd

    if isinstance(where, Path):
        return pd.read_csv(where) if fmt == "csv" else pd.read_parquet(where)
    with where.open("rb") as f:
        return pd.read_csv(f) if fmt == "csv" else pd.read_parquet(f)


def read_input(spec: "DataInput", conn_id: str | None = None) -> "pd.DataFrame":
    if spec.sklearn_dataset:
        import sklearn.datasets

        loader = getattr(sklearn.datasets, f"load_{spec.sklearn_dataset}", None)
        if loader is None:
            raise ValueError(f"scikit-learn has no bundled dataset '{spec.sklearn_dataset}'")
        return loader(as_frame=True).frame
    return read_dataset(spec.path, spec.format, spec.conn_id or conn_id)


def write_dataset(df: "pd.DataFrame", path: Any, fmt: str) -> str:
    """Write ``df`` whole or not at all, so a retried task never sees half a dataset: a local file
    (``pathlib.Path``) goes to a temporary name beside it, then is renamed; an object
    (``ObjectStoragePath``) is serialized in memory and uploaded in one go, which the store
    publishes only once complete. Returns the location to hand downstream (path or URI)."""
    if isinstance(path, Path):
        tmp = path.with_name(path.name + ".tmp")
        if fmt == "csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
        tmp.replace(path)
        return str(path)
    import io

    buffer = io.BytesIO()
    if fmt == "csv":
        buffer.write(df.to_csv(index=False).encode())
    else:
        df.to_parquet(buffer, index=False)
    with path.open("wb") as f:
        f.write(buffer.getvalue())
    return location_of(path)
