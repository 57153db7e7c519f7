"""Reading and writing datasets (pandas) — shared by the stages."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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


def read_dataset(path: str, fmt: str | None = None) -> "pd.DataFrame":
    """A file, or a folder of part files as Spark writes them."""
    import pandas as pd

    fmt = infer_format(path, fmt)
    if fmt == "csv" and Path(path).is_dir():
        parts = sorted(Path(path).glob("part-*.csv"))
        return pd.concat([pd.read_csv(p) for p in parts], ignore_index=True) if parts else pd.DataFrame()
    return pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)


def read_input(spec: "DataInput") -> "pd.DataFrame":
    if spec.sklearn_dataset:
        import sklearn.datasets

        loader = getattr(sklearn.datasets, f"load_{spec.sklearn_dataset}", None)
        if loader is None:
            raise ValueError(f"scikit-learn has no bundled dataset '{spec.sklearn_dataset}'")
        return loader(as_frame=True).frame
    return read_dataset(spec.path, spec.format)


def write_dataset(df: "pd.DataFrame", path: Path, fmt: str) -> str:
    """Write atomically (temp file + rename) so a retried task never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "csv":
        df.to_csv(tmp, index=False)
    else:
        df.to_parquet(tmp, index=False)
    tmp.replace(path)
    return str(path)
