"""GpuTrainOperator: run a training entrypoint on GPUs (a subprocess of the worker, or a GPU pod), with NVML
telemetry, MLflow tracking, a registered model version, checkpoints that survive retries, and cost.

This is the train stage run from Python: it builds the same job as a YAML train stage
(``airflow_mlops.stages.train.job.GpuTrainJob``, with your entrypoint as what to train) and runs it
through the same ``stages.train.measure.TrainingRun`` (NVML, cost, MLflow). The operator only
resolves the task's settings (MLflow target, checkpoint folder, upstream datasets) and decides
where the job runs. Nothing heavy is imported at module level: DAG files import this at every parse.
"""

from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk import BaseOperator

from airflow_mlops._core.errors import ArgumentsError
from airflow_mlops._core.extras import require
from airflow_mlops._core.orphan import end_with_parent
from airflow_mlops._core.paths import dags_folder
from airflow_mlops.backends.links import RUN_URL_XCOM, MlflowRunLink
from airflow_mlops.spec.gpu_train import GpuTrainSpec
from airflow_mlops.spec.models import KubernetesSettings, MlflowSettings, Resources
from airflow_mlops.spec.prices import PriceTable
from airflow_mlops.spec.templating import is_template
from airflow_mlops.spec.training import Distributed


class GpuTrainOperator(BaseOperator):
    """Train on GPUs and track it in MLflow.

    The entrypoint, exactly one of:

    :param entrypoint: ``'pkg.module:function'``, called in a fresh process with the keyword
        arguments it declares among ``params`` (``hyperparams``), ``checkpoint_dir``, and with
        datasets ``train``, ``test``, ``target``, ``features``. Returns ``(model, metrics)`` or
        ``{"model", "metrics", "input_example"}``: a scikit-learn estimator or an
        ``mlflow.pyfunc.PythonModel``, logged and registered as a new version.
    :param script: a Python file, run as ``python script args...``;
    :param module: a module, run as ``python -m module args...``. Scripts and modules log to the
        task's MLflow run themselves: ``MLFLOW_RUN_ID``/``MLFLOW_TRACKING_URI`` are set, so
        ``mlflow.start_run()`` attaches to it; a model they log is registered afterwards.
    :param args: command-line arguments for ``script``/``module`` (templated).

    GPUs and settings:

    :param gpus: how many GPUs, a whole number ≥ 0 (default 1): the ones with the most free memory;
        ``0`` hides all.
    :param gpu_ids: or exactly these NVML indices: ``[0, 1]``, ``"0,1"`` or a template such as
        ``"{{ ti.xcom_pull('wait') }}"`` (``GpuAvailableSensor``'s XCom), rendered to one of those.
    :param hyperparams: hyperparameters, logged as MLflow params and passed as ``params``
        (named so because ``params`` is Airflow's own operator argument).
    :param checkpoint_dir: where the entrypoint saves and resumes checkpoints (also in
        ``$AIRFLOW_MLOPS_CHECKPOINT_DIR``). Default
        ``$AIRFLOW_MLOPS_HOME/checkpoints/<dag>/<run>/<task>``: the same for every try of a task
        instance, so an Airflow retry resumes instead of starting over.
    :param mlflow: ``MlflowSettings`` or a dict (``experiment``, ``registered_model``, ``conn_id``,
        ``tracking_uri``); experiment and model default to ``pipeline_id`` (default: the DAG id).
    :param train_path: the training dataset for a callable (a path).
    :param test_path: the test dataset (a path).
    :param target: the label column.
    :param features: the feature columns (default: every other column).
    :param upstream_task: instead of the paths, the task id of a preprocess stage whose XCom holds
        ``train_path``/``test_path``.
    :param resources: ``{cpu, memory, gpu}`` (or a profile name) the task holds, for the cost and
        the pod; default: the GPUs given, 1 CPU, 1Gi.
    :param prices: ``PriceTable`` or dict: ``gpu_hour`` 2.5, ``cpu_hour`` 0.1, ``memory_gib_hour`` 0.05.
    :param sample_interval: seconds (> 0) between NVML samples (default 1; ``sample_interval_s`` is its
        deprecated name), as ``gpu_metrics.sample_interval`` in a pipeline YAML.
    :param backend: ``"batch"`` (default: a subprocess of the worker, as a pipeline's ``backend:
        batch``) or ``"kubernetes"`` (a GPU pod that runs the same job through ``python -m
        airflow_mlops.stages.train.runner job``). ``"local"``, the old name of ``"batch"``, still
        works and warns (``MlopsDeprecationWarning``).
    :param kubernetes: pod settings for the kubernetes backend (``image`` required).
    :param distributed: with the kubernetes backend, multi-node torchrun: ``Distributed`` or a dict
        ``{nodes, nproc_per_node, launcher, rendezvous: {backend, port, timeout}}`` — ``nodes``
        pods each holding ``resources``, a headless Service, all or nothing (the YAML train
        stage's ``distributed:``; see ``backends/kubernetes/distributed.py``).
    :param env: extra environment variables for the training process.
    :param prometheus_port: serve the GPU figures at ``:<port>/metrics`` while training (0-65535).
    :param pushgateway_url: push them to a Prometheus Pushgateway, an http(s) URL (each flush and at
        the end).
    :param mlflow_ui_url: base URL of the MLflow UI for the extra link (default:
        ``$AIRFLOW_MLOPS_MLFLOW_UI_URL``, else the tracking URI when it is http(s), else
        http://localhost:5000, where ``mlflow ui`` serves a local store).

    Returns (XCom): ``run_id``, ``mlflow_run_url``, ``model_name``, ``model_version``,
    ``model_uri``, ``metrics``, ``checkpoint_dir``, ``gpu`` (ids, summary), ``cost``.

    The arguments are validated by one model, ``airflow_mlops.spec.gpu_train.GpuTrainSpec``, when
    the DAG is parsed: every problem at once, each at its argument, as ``ArgumentsError`` (a
    ``ValueError``; ``airflow-mlops validate`` reports each at its line of a pipeline's ``args:``).
    Then the backend's needs (``kubernetes.image``), the extra the backend runs with
    (``MissingExtra``) and where the training code is. The template fields are validated again once
    rendered, in ``execute``: a value that does not fit fails the task without retrying
    (``AirflowFailException``).
    """

    template_fields: Sequence[str] = (
        "entrypoint", "script", "module", "args", "hyperparams", "checkpoint_dir", "train_path", "test_path",
        "gpu_ids", "env",
    )
    template_fields_renderers = {"hyperparams": "json", "env": "json"}
    operator_extra_links = (MlflowRunLink(),)
    ui_color = "#d9f2b4"
    accepted_kwargs = ("sample_interval_s",)  # the deprecated name of sample_interval

    def __init__(
        self,
        *,
        entrypoint: str | None = None,
        script: str | None = None,
        module: str | None = None,
        args: Sequence[str] = (),
        gpus: int | None = None,
        gpu_ids: Sequence[int] | str | None = None,
        hyperparams: dict[str, Any] | None = None,
        checkpoint_dir: str | None = None,
        mlflow: MlflowSettings | dict[str, Any] | None = None,
        pipeline_id: str | None = None,
        train_path: str | None = None,
        test_path: str | None = None,
        target: str | None = None,
        features: Sequence[str] | None = None,
        upstream_task: str | None = None,
        resources: Resources | dict[str, Any] | str | None = None,
        prices: PriceTable | dict[str, Any] | None = None,
        sample_interval: float = 1.0,
        backend: str = "batch",
        kubernetes: KubernetesSettings | dict[str, Any] | None = None,
        distributed: Distributed | dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        prometheus_port: int | None = None,
        pushgateway_url: str | None = None,
        mlflow_ui_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        from airflow_mlops._core.validation import validated
        from airflow_mlops.spec.renamed import pop_renamed

        sample_interval = pop_renamed("GpuTrainOperator", kwargs).get("sample_interval", sample_interval)
        super().__init__(**kwargs)
        owner = f"GpuTrainOperator(task_id={self.task_id!r})"
        given = {
            "entrypoint": entrypoint, "script": script, "module": module, "args": args, "gpus": gpus,
            "gpu_ids": gpu_ids, "hyperparams": hyperparams, "checkpoint_dir": checkpoint_dir, "mlflow": mlflow,
            "pipeline_id": pipeline_id, "train_path": train_path, "test_path": test_path, "target": target,
            "features": features, "upstream_task": upstream_task, "resources": resources, "prices": prices,
            "sample_interval": sample_interval, "backend": backend, "kubernetes": kubernetes,
            "distributed": distributed, "env": env, "prometheus_port": prometheus_port,
            "pushgateway_url": pushgateway_url, "mlflow_ui_url": mlflow_ui_url,
        }
        spec = validated(GpuTrainSpec, {k: v for k, v in given.items() if v is not None}, owner)
        # What the model cannot see: the backend's needs, the extra it runs with, the training code.
        lacking = _backend(spec.backend).problems(spec.kubernetes)
        if lacking:
            raise ArgumentsError.one(owner, "kubernetes", lacking)
        # The extra the backend runs the job with (NVML in the worker; the pod API for pods).
        require(_backend(spec.backend).TRAINING_EXTRA, f"{owner} on the {spec.backend} backend")
        located = self._locate(spec.entrypoint, spec.script, spec.module,
                               lambda message, argument: ArgumentsError.one(owner, argument, message))
        for name in GpuTrainSpec.model_fields:  # the template fields among them are rendered in place
            setattr(self, _ATTRIBUTE.get(name, name), getattr(spec, name))
        self.script = located
        self._run: Any = None

    def rendered_spec(self) -> GpuTrainSpec:
        """The arguments once Airflow rendered the template fields, validated again (in ``execute``):
        a rendered value that does not fit fails the task without retrying (a retry renders the same)."""
        from airflow_mlops._core.outcome import failed
        from airflow_mlops._core.validation import validated
        from airflow_mlops.spec.templating import RENDERED

        data = {name: getattr(self, _ATTRIBUTE.get(name, name)) for name in GpuTrainSpec.model_fields}
        owner = f"GpuTrainOperator(task_id={self.task_id!r}) (after rendering its templates)"
        try:
            spec = validated(GpuTrainSpec, data, owner, {RENDERED: True})
        except ValueError as exc:
            raise failed(str(exc)) from None
        # Training code given as a template was not looked for at parse: it is now, where the
        # training process will look (a relative script becomes its path).
        script = self._locate(spec.entrypoint, spec.script, spec.module,
                              lambda message, argument: failed(f"{owner}: {argument}: {message}"))
        return spec if script == spec.script else spec.model_copy(update={"script": script})

    def _locate(self, entrypoint: str | None, script: str | None, module: str | None, bad: Any) -> str | None:
        """Fail at parse when the training code cannot be found where the training process will
        look: the DAG file's folder, the dags folder / bundle, the worker's path. A relative
        script is taken from the DAG file's folder. Returns the script's path."""
        from airflow_mlops._core.paths import code_paths, module_findable

        paths = code_paths(getattr(self.dag, "fileloc", None) if self.has_dag() else None, dags_folder())
        name = entrypoint.partition(":")[0] if entrypoint else module
        if name and not is_template(name) and not module_findable(name, paths):
            where = ", ".join(paths) or "the worker's sys.path"
            raise bad(f"cannot find module '{name}' of {'entrypoint' if entrypoint else 'module'}= "
                      f"{entrypoint or module!r}: searched {where} and the worker's sys.path",
                      "entrypoint" if entrypoint else "module")
        if script and not is_template(script):
            import os

            path = script if os.path.isabs(script) or not paths else os.path.join(paths[0], script)
            if not os.path.isfile(path):
                raise bad(f"script {script!r} does not exist (looked for {path})", "script")
            return path
        return script

    # -- the job ------------------------------------------------------------------------------

    def build_job(self, context: Any, spec: GpuTrainSpec | None = None) -> Any:
        """The plain-Python job for this try (what runs in the worker or the pod), from ``spec``
        (default: the rendered arguments, validated again)."""
        from airflow_mlops._core.context import run_tags
        from airflow_mlops._core.names import safe_run_key
        from airflow_mlops._core.paths import code_paths, mlops_home
        from airflow_mlops.hooks.mlflow import resolve_target
        from airflow_mlops.stages.train.job import GpuTrainJob, TrainData

        spec = spec or self.rendered_spec()
        ti = context["ti"]
        run_id = context["run_id"]
        pipeline_id = spec.pipeline_id or ti.dag_id
        target = resolve_target(spec.mlflow, pipeline_id)
        checkpoint_dir = spec.checkpoint_dir or str(
            mlops_home() / "checkpoints" / ti.dag_id / safe_run_key(run_id) / ti.task_id)
        data = None
        if spec.upstream_task:
            upstream = ti.xcom_pull(task_ids=spec.upstream_task) or {}
            if "train_path" not in upstream:
                from airflow_mlops._core.outcome import failed

                raise failed(
                    f"upstream task '{spec.upstream_task}' gave no train_path (its XCom has: {sorted(upstream) or 'nothing'})")
            data = TrainData(train_path=upstream["train_path"], test_path=upstream.get("test_path"),
                             target=spec.target, features=spec.features)
        elif spec.train_path:
            data = TrainData(train_path=spec.train_path, test_path=spec.test_path, target=spec.target,
                             features=spec.features)
        resources = spec.resources.held() if spec.resources else None
        return GpuTrainJob(
            entrypoint=spec.entrypoint, script=spec.script, module=spec.module, args=spec.args,
            hyperparams=spec.hyperparams, gpus=spec.gpu_count(), gpu_ids=spec.gpu_ids,
            checkpoint_dir=checkpoint_dir, tracking_uri=target.tracking_uri, experiment=target.experiment,
            registered_model=target.registered_model, artifact_location=target.artifact_location,
            run_name=f"{pipeline_id}.{ti.task_id}", tags=run_tags(ti, run_id),
            resources=resources, prices=spec.prices, sample_interval_s=spec.sample_interval, data=data,
            env=spec.env, python_path=code_paths(getattr(context.get("dag"), "fileloc", None), dags_folder()),
            prometheus_port=spec.prometheus_port, pushgateway_url=spec.pushgateway_url, ui_url=spec.mlflow_ui_url,
            credentials=target.credentials,
        )

    def execute(self, context: Any) -> dict[str, Any]:
        end_with_parent()  # a worker lost under this task must not leave its work running twice
        from airflow_mlops._core.mlflow import use_credentials
        from airflow_mlops._core.outcome import airflow_outcome

        spec = self.rendered_spec()  # a rendered value that does not fit: failed, no retry
        # A relative tracking URI in a connection, StageFailed: no retry; DependencyFailed (the tracking
        # server, logged first by the run): as it says (_core.outcome).
        with airflow_outcome():
            job = self.build_job(context, spec)
            use_credentials(job.target())  # this task's process and what it starts (a training script)
            self.log.info("GPU training of %s, asking for %s on the %s backend, checkpoints in %s, MLflow %s "
                          "(experiment '%s', model '%s')", job.entrypoint or job.script or job.module,
                          f"{job.gpus} GPU(s)" if job.gpu_ids is None else f"GPU(s) {job.gpu_ids}", self.backend,
                          job.checkpoint_dir, job.tracking_uri, job.experiment, job.registered_model)
            self._run = self.training(job, context)
            result = self._run.run()
        self._push_url(context, result["mlflow_run_url"])
        return result

    def training(self, job: Any, context: Any) -> Any:
        """The backend's run of ``job`` (``backends.<backend>.training``): ``.run()``, ``.kill()``."""
        group = {"distributed": self.distributed} if self.distributed is not None else {}
        return _backend(self.backend).training(
            job, **group, log=self.log, on_run=lambda _run_id, url: self._push_url(context, url), task_id=self.task_id,
            kubernetes=self.kubernetes, held_resources=self.held_resources, mlflow=self.mlflow, context=context,
            pipeline_id=self.pipeline_id or job.tags.get("airflow.dag_id") or "gpu-train")

    def _push_url(self, context: Any, url: str) -> None:
        self.mlflow_run_url = url  # for MlflowRunLink, also when the try fails later
        context["ti"].xcom_push(key=RUN_URL_XCOM, value=url)

    def pod_operator(self, job: Any, secret_env: dict[str, Any] | None = None) -> Any:
        """The KubernetesPodOperator the kubernetes backend would run ``job`` in (what the tests
        inspect through ``build_pod_request_obj(dry_run=True)``)."""
        from airflow_mlops.backends.kubernetes.pod_training import PodTraining

        return PodTraining(job, task_id=self.task_id, kubernetes=self.kubernetes, held_resources=self.held_resources,
                           pipeline_id=self.pipeline_id or job.tags.get("airflow.dag_id") or "gpu-train",
                           mlflow=self.mlflow, context=None, log=self.log).pod_operator(secret_env)

    def on_kill(self) -> None:
        if self._run is not None:
            self._run.kill()


def _backend(name: str) -> Any:
    """The backend module that runs this operator's work: ``batch`` (the worker) or ``kubernetes``
    (``GpuTrainSpec`` already turned the deprecated ``local`` into ``batch``)."""
    import importlib

    return importlib.import_module(f"airflow_mlops.backends.{name}")


# Where a GpuTrainSpec field is kept on the operator, when not under its own name.
_ATTRIBUTE = {"resources": "held_resources"}  # not self.resources: BaseOperator's own
