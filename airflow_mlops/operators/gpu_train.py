"""GpuTrainOperator: run a training entrypoint on GPUs (a local subprocess, or a GPU pod), with NVML
telemetry, MLflow tracking, a registered model version, checkpoints that survive retries, and cost.

This is the train stage run from Python: it builds the same job as a YAML train stage
(``airflow_mlops.stages.train.job.GpuTrainJob``, with your entrypoint as what to train) and runs it
through the same ``stages.train.measure.TrainingRun`` (NVML, cost, MLflow). The operator only
resolves the task's settings (MLflow target, checkpoint folder, upstream datasets) and decides
where the job runs. Nothing heavy is imported at module level: DAG files import this at every parse.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from airflow.sdk import BaseOperator
from pydantic import BaseModel, ValidationError

from airflow_mlops._core.errors import ArgumentsError
from airflow_mlops._core.extras import require
from airflow_mlops._core.orphan import end_with_parent
from airflow_mlops._core.paths import dags_folder
from airflow_mlops.backends.links import RUN_URL_XCOM, MlflowRunLink
from airflow_mlops.spec.base import IMPORT_PATH
from airflow_mlops.spec.models import BUILTIN_PROFILES, KubernetesSettings, MlflowSettings, Resources
from airflow_mlops.spec.prices import PriceTable
from airflow_mlops.spec.training import Distributed
from airflow_mlops.telemetry.devices import parse_gpu_ids

BACKENDS = ("local", "kubernetes")


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


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

    :param gpus: how many GPUs (default 1): the ones with the most free memory; ``0`` hides all.
    :param gpu_ids: or exactly these NVML indices (e.g. from ``GpuAvailableSensor``'s XCom).
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
    :param sample_interval: seconds between NVML samples (default 1; ``sample_interval_s`` is its
        deprecated name), as ``gpu_metrics.sample_interval`` in a pipeline YAML.
    :param backend: ``"local"`` (a subprocess of the worker) or ``"kubernetes"`` (a GPU pod that
        runs the same job through ``python -m airflow_mlops.stages.train.runner job``).
    :param kubernetes: pod settings for the kubernetes backend (``image`` required).
    :param distributed: with the kubernetes backend, multi-node torchrun: ``Distributed`` or a dict
        ``{nodes, nproc_per_node, launcher, rendezvous: {backend, port, timeout}}`` — ``nodes``
        pods each holding ``resources``, a headless Service, all or nothing (the YAML train
        stage's ``distributed:``; see ``backends/kubernetes/distributed.py``).
    :param env: extra environment variables for the training process.
    :param prometheus_port: serve the GPU figures at ``:<port>/metrics`` while training.
    :param pushgateway_url: push them to a Prometheus Pushgateway (each flush and at the end).
    :param mlflow_ui_url: base URL of the MLflow UI for the extra link (default:
        ``$AIRFLOW_MLOPS_MLFLOW_UI_URL``, else the tracking URI when it is http(s), else
        http://localhost:5000, where ``mlflow ui`` serves a local store).

    Returns (XCom): ``run_id``, ``mlflow_run_url``, ``model_name``, ``model_version``,
    ``model_uri``, ``metrics``, ``checkpoint_dir``, ``gpu`` (ids, summary), ``cost``.
    """

    template_fields: Sequence[str] = (
        "entrypoint", "script", "module", "args", "hyperparams", "checkpoint_dir", "train_path", "test_path",
        "gpu_ids", "env",
    )
    template_fields_renderers = {"hyperparams": "json", "env": "json"}
    operator_extra_links = (MlflowRunLink(),)
    ui_color = "#d9f2b4"
    accepted_kwargs = ("sample_interval_s",)  # the deprecated name of sample_interval

    def __init__(  # noqa: C901
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
        backend: str = "local",
        kubernetes: KubernetesSettings | dict[str, Any] | None = None,
        distributed: Distributed | dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        prometheus_port: int | None = None,
        pushgateway_url: str | None = None,
        mlflow_ui_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        from airflow_mlops.spec.renamed import pop_renamed

        sample_interval = pop_renamed("GpuTrainOperator", kwargs).get("sample_interval", sample_interval)
        super().__init__(**kwargs)
        owner = f"GpuTrainOperator(task_id={self.task_id!r})"

        def bad(message: str, argument: str | None = None) -> ValueError:
            return ArgumentsError.one(owner, argument, message)

        given = [name for name, value in (("entrypoint", entrypoint), ("script", script), ("module", module)) if value]
        if len(given) != 1:
            raise bad(f"give exactly one of entrypoint= ('pkg.module:function'), script= or module=; got {given or 'none'}")
        if entrypoint and not _templated(entrypoint) and not re.match(IMPORT_PATH, entrypoint):
            raise bad(f"entrypoint must look like 'package.module:function', got {entrypoint!r}", "entrypoint")
        if isinstance(args, str) or not all(isinstance(a, (str, int, float)) for a in args):
            raise bad(f"args must be a list of strings, got {args!r}", "args")
        if args and entrypoint:
            raise bad("args= are for script=/module=; a callable entrypoint takes hyperparams=", "args")
        if gpus is not None and gpu_ids is not None:
            raise bad("give gpus= (how many) or gpu_ids= (which), not both")
        if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0):
            raise bad(f"gpus must be a whole number ≥ 0, got {gpus!r}", "gpus")
        if gpu_ids is not None and not _templated(gpu_ids):
            gpu_ids = parse_gpu_ids(gpu_ids, lambda message: bad(message, "gpu_ids"))
        if hyperparams is not None and not isinstance(hyperparams, dict):
            raise bad(f"hyperparams must be a dict, got {type(hyperparams).__name__}", "hyperparams")
        if isinstance(sample_interval, bool) or not isinstance(sample_interval, (int, float)) or sample_interval <= 0:
            raise bad(f"sample_interval must be a number of seconds > 0, got {sample_interval!r}",
                      "sample_interval")
        if backend not in BACKENDS:
            raise bad(f"backend must be one of {BACKENDS}, got {backend!r}", "backend")
        # NVML picks and measures the GPUs where the job runs: the worker here, else the pod's image.
        require("gpu" if backend == "local" else "cncf-kubernetes", f"{owner} on the {backend} backend")
        data_given = any(v is not None for v in (train_path, test_path, upstream_task))
        if data_given and not entrypoint:
            raise bad("train_path/test_path/upstream_task hand datasets to a callable entrypoint; scripts read their own")
        if data_given and not target:
            raise bad("target= (the label column) is required with datasets")
        if train_path is None and test_path is not None:
            raise bad("test_path needs train_path", "test_path")
        if train_path is not None and upstream_task is not None:
            raise bad("give train_path/test_path or upstream_task, not both")
        if prometheus_port is not None and (isinstance(prometheus_port, bool) or not isinstance(prometheus_port, int)
                                            or not 0 <= prometheus_port <= 65535):
            raise bad(f"prometheus_port must be a port number, got {prometheus_port!r}", "prometheus_port")
        if pushgateway_url is not None and not str(pushgateway_url).startswith(("http://", "https://")):
            raise bad(f"pushgateway_url must be an http(s) URL, got {pushgateway_url!r}", "pushgateway_url")
        if env is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise bad("env must map names to string values", "env")
        settings = {
            "mlflow": (MlflowSettings, lambda: MlflowSettings.model_validate(mlflow or {})),
            "prices": (PriceTable, lambda: PriceTable.model_validate(
                prices.model_dump() if isinstance(prices, PriceTable) else (prices or {}))),
            "resources": (Resources, lambda: _resources(resources)),
            "kubernetes": (KubernetesSettings, lambda: KubernetesSettings.model_validate(kubernetes)
                           if kubernetes is not None else None),
            "distributed": (Distributed, lambda: Distributed.model_validate(
                distributed.model_dump() if isinstance(distributed, Distributed) else distributed)
                if distributed is not None else None),
        }
        made = {}
        for argument, (model, make) in settings.items():
            try:
                made[argument] = make()
            except ValidationError as exc:
                errors = [{**e, "loc": (argument, *e["loc"])} for e in exc.errors(include_url=False)]
                raise ArgumentsError(owner, errors, _ArgumentModels, f"{owner}: {exc}") from exc
            except ValueError as exc:
                raise bad(str(exc), argument) from exc
        self.mlflow, self.prices, self.kubernetes = made["mlflow"], made["prices"], made["kubernetes"]
        self.held_resources = made["resources"]  # not self.resources: BaseOperator's own
        self.distributed = made["distributed"]
        if self.distributed is not None and backend != "kubernetes":
            raise bad(f"distributed= runs a torchrun group of pods: it needs backend='kubernetes', got {backend!r}",
                      "distributed")
        lacking = _backend(backend).problems(self.kubernetes)
        if lacking:
            raise bad(lacking, "kubernetes")
        script = self._locate(entrypoint, script, module, bad)

        self.entrypoint = entrypoint
        self.script = script
        self.module = module
        self.args = [str(a) for a in args]
        self.gpus = gpus if gpus is not None or gpu_ids is not None else 1
        self.gpu_ids = gpu_ids
        self.hyperparams = dict(hyperparams or {})
        self.checkpoint_dir = checkpoint_dir
        self.pipeline_id = pipeline_id
        self.train_path = train_path
        self.test_path = test_path
        self.target = target
        self.features = list(features) if features is not None else None
        self.upstream_task = upstream_task
        self.sample_interval = float(sample_interval)
        self.backend = backend
        self.env = dict(env or {})
        self.prometheus_port = prometheus_port
        self.pushgateway_url = pushgateway_url
        self.mlflow_ui_url = mlflow_ui_url
        self._run: Any = None

    def _locate(self, entrypoint: str | None, script: str | None, module: str | None, bad: Any) -> str | None:
        """Fail at parse when the training code cannot be found where the training process will
        look: the DAG file's folder, the dags folder / bundle, the worker's path. A relative
        script is taken from the DAG file's folder. Returns the script's path."""
        from airflow_mlops._core.paths import code_paths, module_findable

        paths = code_paths(getattr(self.dag, "fileloc", None) if self.has_dag() else None, dags_folder())
        name = entrypoint.partition(":")[0] if entrypoint else module
        if name and not _templated(name) and not module_findable(name, paths):
            where = ", ".join(paths) or "the worker's sys.path"
            raise bad(f"cannot find module '{name}' of {'entrypoint' if entrypoint else 'module'}= "
                      f"{entrypoint or module!r}: searched {where} and the worker's sys.path",
                      "entrypoint" if entrypoint else "module")
        if script and not _templated(script):
            import os

            path = script if os.path.isabs(script) or not paths else os.path.join(paths[0], script)
            if not os.path.isfile(path):
                raise bad(f"script {script!r} does not exist (looked for {path})", "script")
            return path
        return script

    # -- the job ------------------------------------------------------------------------------

    def build_job(self, context: Any) -> Any:
        """The plain-Python job for this try (what runs in the worker or the pod)."""
        from airflow_mlops._core.names import safe_run_key
        from airflow_mlops._core.paths import code_paths, mlops_home
        from airflow_mlops.hooks.mlflow import resolve_target
        from airflow_mlops.stages.train.job import TASK_KEY_TAG, GpuTrainJob, TrainData

        ti = context["ti"]
        run_id = context["run_id"]
        pipeline_id = self.pipeline_id or ti.dag_id
        target = resolve_target(self.mlflow, pipeline_id)
        checkpoint_dir = self.checkpoint_dir or str(
            mlops_home() / "checkpoints" / ti.dag_id / safe_run_key(run_id) / ti.task_id)
        data = None
        if self.upstream_task:
            upstream = ti.xcom_pull(task_ids=self.upstream_task) or {}
            if "train_path" not in upstream:
                from airflow_mlops._core.outcome import failed

                raise failed(
                    f"upstream task '{self.upstream_task}' gave no train_path (its XCom has: {sorted(upstream) or 'nothing'})")
            data = TrainData(train_path=upstream["train_path"], test_path=upstream.get("test_path"),
                             target=self.target, features=self.features)
        elif self.train_path:
            data = TrainData(train_path=self.train_path, test_path=self.test_path, target=self.target,
                             features=self.features)
        gpu_ids = parse_gpu_ids(self.gpu_ids, ValueError) if self.gpu_ids is not None else None
        resources = self.held_resources.model_dump(exclude_none=True, exclude={"profile"}) if self.held_resources else None
        return GpuTrainJob(
            entrypoint=self.entrypoint, script=self.script, module=self.module, args=self.args,
            hyperparams=self.hyperparams, gpus=None if gpu_ids is not None else self.gpus, gpu_ids=gpu_ids,
            checkpoint_dir=checkpoint_dir, tracking_uri=target.tracking_uri, experiment=target.experiment,
            registered_model=target.registered_model, artifact_location=target.artifact_location,
            run_name=f"{pipeline_id}.{ti.task_id}",
            tags={
                "airflow.dag_id": ti.dag_id,
                "airflow.run_id": run_id,
                "airflow.task_id": ti.task_id,
                "airflow.try_number": str(ti.try_number),
                # The same for every try of this task instance: lets a retry find its earlier work.
                TASK_KEY_TAG: f"{ti.dag_id}/{run_id}/{ti.task_id}",
            },
            resources=resources, prices=self.prices, sample_interval_s=self.sample_interval, data=data,
            env=self.env, python_path=code_paths(getattr(context.get("dag"), "fileloc", None), dags_folder()),
            prometheus_port=self.prometheus_port, pushgateway_url=self.pushgateway_url, ui_url=self.mlflow_ui_url,
        )

    def execute(self, context: Any) -> dict[str, Any]:
        end_with_parent()  # a worker lost under this task must not leave its work running twice
        from airflow_mlops._core.outcome import airflow_outcome

        with airflow_outcome():  # a relative tracking URI in a connection: no retry (_core.outcome)
            job = self.build_job(context)
        self.log.info("GPU training of %s, asking for %s on the %s backend, checkpoints in %s, MLflow %s "
                      "(experiment '%s', model '%s')", job.entrypoint or job.script or job.module,
                      f"{job.gpus} GPU(s)" if job.gpu_ids is None else f"GPU(s) {job.gpu_ids}", self.backend,
                      job.checkpoint_dir, job.tracking_uri, job.experiment, job.registered_model)
        self._run = self.training(job, context)
        # StageFailed: no retry; DependencyFailed (the tracking server, logged first by the run): as
        # it says (_core.outcome).
        with airflow_outcome():
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
    """The backend module that runs this operator's work: ``local`` is the batch backend (the
    worker), ``kubernetes`` the kubernetes one."""
    import importlib

    return importlib.import_module(f"airflow_mlops.backends.{'batch' if name == 'local' else name}")


class _ArgumentModels(BaseModel):
    """The arguments that are pydantic models, so that an error inside one names its valid keys."""

    mlflow: MlflowSettings | None = None
    prices: PriceTable | None = None
    resources: Resources | str | None = None
    kubernetes: KubernetesSettings | None = None
    distributed: Distributed | None = None


def _resources(value: Any) -> Resources | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in BUILTIN_PROFILES:
            raise ValueError(f"unknown resource profile {value!r}; built in: {sorted(BUILTIN_PROFILES)}")
        return BUILTIN_PROFILES[value]
    resources = Resources.model_validate(value.model_dump() if isinstance(value, Resources) else value)
    if resources.profile:
        if resources.profile not in BUILTIN_PROFILES:
            raise ValueError(f"unknown resource profile {resources.profile!r}; built in: {sorted(BUILTIN_PROFILES)}")
        base = BUILTIN_PROFILES[resources.profile].model_dump(exclude_none=True)
        resources = Resources(**{**base, **resources.model_dump(exclude_none=True, exclude={"profile"})})
    return resources
