"""Operators whose arguments form one pydantic spec, templated like Airflow's own operators.

The validated spec is kept as plain JSON (``spec_args``, the operator's template field), so
Airflow renders any ``{{ ds }}``, ``{{ params.x }}`` or ``{{ ti.xcom_pull(...) }}`` in it when the
task runs and the UI's "Rendered Template" view shows the result. At parse the arguments are
validated with templates standing in for their values (a path holding a template is not checked
for being absolute yet; a number or a flag may be a template); when the task runs the rendered
arguments are validated again with the same model, templates no longer allowed, and a value the
model refuses fails the task without retrying, naming the argument and what it rendered to.
"""

from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk import BaseOperator
from pydantic import BaseModel


class SpecArgsOperator(BaseOperator):
    """Base of the lifecycle operators: ``spec_model`` validates ``spec_args``."""

    spec_model: type[BaseModel]
    template_fields: Sequence[str] = ("spec_args",)
    template_fields_renderers = {"spec_args": "json"}

    def _set_spec(self, data: dict[str, Any]) -> None:
        """Validate ``data`` (raises ArgumentsError, a ValueError, at parse) and keep it as JSON."""
        from airflow_mlops.lifecycle.specs import validated

        spec = validated(self.spec_model, data, self._owner())
        # warnings=False: a template standing in for a number is a string until rendered.
        self.spec_args: dict[str, Any] = spec.model_dump(mode="json", warnings=False)

    def _owner(self) -> str:
        return f"{type(self).__name__} '{self.task_id}'"

    @property
    def spec(self) -> Any:
        """The spec as validated at parse (templates unrendered)."""
        return self.spec_model.model_validate(self.spec_args)

    def rendered_spec(self) -> Any:
        """The spec from the rendered arguments, validated again (call in ``execute``)."""
        from airflow_mlops._core.outcome import failed
        from airflow_mlops.lifecycle.specs import validated
        from airflow_mlops.spec.templating import RENDERED

        try:
            return validated(self.spec_model, self.spec_args, self._owner() + " (after rendering its templates)",
                             context={RENDERED: True})
        except ValueError as exc:  # the rendered values are wrong: a retry renders the same
            raise failed(str(exc)) from None
