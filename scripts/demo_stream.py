"""The demo's streaming part, around ``airflow dags test breast_cancer_stream`` (see demo.sh):

    demo_stream.py produce BOOTSTRAP   put tumour records on 'tumours' (and one that is not JSON)
    demo_stream.py report BOOTSTRAP    what the run produced: predictions, dead letters, accuracy
"""

from __future__ import annotations

import json
import sys

from airflow_mlops.kafka.topics import headers, produce, read_to_end

RECORDS = 300  # of the dataset's 569 rows, in a fixed shuffled order


def tumours() -> tuple[list[dict], dict[str, int]]:
    """Records as an upstream system would send them (an id and the 30 measurements), and the
    label of each id, kept aside to check the predictions."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.sample(n=RECORDS, random_state=11)
    records, labels = [], {}
    for index, row in frame.iterrows():
        record_id = f"tumour-{index}"
        records.append({"id": record_id, **{k: float(v) for k, v in row.drop("target").items()}})
        labels[record_id] = int(row["target"])
    return records, labels


def produce_records(bootstrap: str) -> None:
    records, _ = tumours()
    sent = produce(bootstrap, "tumours", [(r["id"].encode(), json.dumps(r).encode()) for r in records])
    sent += produce(bootstrap, "tumours", [(b"tumour-garbled", b"{not json")])
    print(f"    produced {sent} records to 'tumours' ({sent - 1} tumours, 1 garbled on purpose)")


def report(bootstrap: str) -> None:
    _, labels = tumours()
    scored = read_to_end(bootstrap, "tumours.scored")
    letters = read_to_end(bootstrap, "tumours.dlq")
    predictions = {json.loads(r.value)["id"]: json.loads(r.value)["prediction"] for r in scored}
    right = sum(int(predictions[i]) == labels[i] for i in predictions)
    versions = sorted({headers(r).get("model_version", "?") for r in scored})
    print(f"""
==> breast_cancer_stream: done, every record accounted for
  predictions      {len(scored)} on 'tumours.scored' (model version {', '.join(versions)}), {right} match the label
  dead letters     {len(letters)} on 'tumours.dlq': {', '.join(
        f"{r.key.decode()} ({headers(r).get('error_type')})" for r in letters) or 'none'}
""")
    if len(predictions) + len(letters) != RECORDS + 1:
        sys.exit(f"expected {RECORDS + 1} records out, got {len(predictions)} predictions and {len(letters)} dead letters")


if __name__ == "__main__":
    {"produce": produce_records, "report": report}[sys.argv[1]](sys.argv[2])
