"""What each stage kind reads from the stages before it (``ctx.find`` in its engine), checked
when the pipeline is read rather than found missing when the task runs. Each kind's entry in
``stages.registry`` names its function here; a custom stage upstream may return anything, so a
stage after one is not checked.

- train reads the train/test split of an upstream preprocess stage;
- validate checks the model version an upstream train stage registered;
- serve serves the model version of an upstream train or validate stage, else its own ``model:``,
  else the pipeline's ``mlflow.registered_model`` (its champion); batch mode (and online mode
  where the task starts the server: ``Pipeline.hosts_server``) scores its ``input:``, else an upstream preprocess stage's test split;
- drift compares ``current`` with its ``reference:``, else an upstream preprocess stage's train split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

LISTED = " (or list one in its depends_on)"


@dataclass(frozen=True)
class Upstream:
    """What the stages before one give it: their kinds, whether a preprocess stage among them
    splits into train/test, and a note naming one that does not (for messages)."""

    kinds: frozenset[str]
    split: bool
    unsplit: str


def upstream_of(pipeline: Any, names: list[str]) -> Upstream:
    prep = [n for n in names if pipeline.stages[n].kind == "preprocess"]
    split = any(pipeline.stages[n].split is not None for n in prep)
    unsplit = f"; preprocess '{prep[0]}' has 'split: null' (one dataset, no train/test split)" if prep and not split else ""
    return Upstream(frozenset(pipeline.stages[n].kind for n in names), split, unsplit)


def train(stage: Any, up: Upstream, pipeline: Any) -> Iterator[str]:
    if not up.split:
        yield (f"trains on the train/test split of an upstream preprocess stage, and has none{up.unsplit}: "
               f"add a preprocess stage before it{LISTED}")


def validate(stage: Any, up: Upstream, pipeline: Any) -> Iterator[str]:
    if "train" not in up.kinds:
        yield f"validates the model version an upstream train stage registers, and has none: add a train stage before it{LISTED}"


def serve(stage: Any, up: Upstream, pipeline: Any) -> Iterator[str]:
    model = stage.model or (stage.stream.model_uri if stage.stream else None)
    if not (model or up.kinds & {"train", "validate"} or pipeline.mlflow.registered_model):
        yield ("serves a model, and no stage before it trains or validates one: add a train or validate stage "
               "before it, set 'model: models:/<name>@<alias>' on it, or set mlflow.registered_model to serve "
               "that model's 'champion'")
    # Online, the task sends a sample to the server it starts; a backend's own server is sent none.
    reads = stage.mode == "batch" or (stage.mode == "online" and not pipeline.hosts_server(stage))
    if reads and stage.input is None and not up.split:
        what = "scores" if stage.mode == "batch" else "sends a sample to the model server from"
        yield (f"{what} a dataset, and has none{up.unsplit}: set 'input' on it, or add a preprocess stage before "
               f"it to use its test split{LISTED}")


def drift(stage: Any, up: Upstream, pipeline: Any) -> Iterator[str]:
    if stage.reference is None and not up.split:
        yield (f"compares 'current' with a reference, and has none{up.unsplit}: set 'reference' on it, or add a "
               f"preprocess stage before it to use its train split{LISTED}")
