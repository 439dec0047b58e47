"""A bundle as an MLflow pyfunc model, so `mlflow models serve` answers prediction requests.

The model's only artefact is the bundle directory (safetensors weights, verified manifest); a
request is a table with one column `path` (image files readable by the server) and, optionally,
`profile`; the answer is the predictions CSV's rows (docs: README, "Inference on new images").

    python -c "from leukoflow.inference import serving; serving.save_model('results/bundle', 'bundle_model')"
    mlflow models serve -m bundle_model --env-manager local --host 127.0.0.1 --port 5001
    curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \
        -d '{"dataframe_split": {"columns": ["path"], "data": [["/data/smear1.jpg"]]}}'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

BUNDLE_ARTIFACT = "bundle"


def _python_model_class():
    import mlflow.pyfunc

    class BundleModel(mlflow.pyfunc.PythonModel):
        """Loads the bundle's models once per server process; predicts the listed image files."""

        def load_context(self, context: Any) -> None:
            from leukoflow.engine import offline

            offline.enforce()
            self.bundle = context.artifacts[BUNDLE_ARTIFACT]
            self.predictors: dict[str, Any] = {}

        def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
            from leukoflow.inference.inputs import collect_images
            from leukoflow.inference.predictor import Predictor

            profile = str((params or {}).get("profile", "full"))
            if profile not in self.predictors:
                self.predictors[profile] = Predictor(self.bundle, profile=profile)
            paths = collect_images(list(model_input["path"].astype(str)))
            return self.predictors[profile].predict(paths)

    return BundleModel


def save_model(bundle: str | Path, path: str | Path) -> Path:
    """Write an MLflow pyfunc model folder around a copy of the bundle; returns its path."""
    import mlflow.pyfunc

    from leukoflow.inference.bundle import load_bundle

    load_bundle(bundle)  # refuse an altered or unsafe bundle before packaging it
    workflow_dir = Path(__file__).resolve().parents[2]
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    signature = ModelSignature(inputs=Schema([ColSpec("string", "path")]),
                               params=ParamSchema([ParamSpec("profile", "string", "full")]))
    mlflow.pyfunc.save_model(str(path), python_model=_python_model_class()(),
                             artifacts={BUNDLE_ARTIFACT: str(Path(bundle).resolve())},
                             code_paths=[str(workflow_dir / "leukoflow")], signature=signature)
    return Path(path)
