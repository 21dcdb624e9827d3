"""Model sources: a name resolves to a ``ModelSpec`` (``registry``); ``load_model`` builds the module with its
weights (``loading``, ``weights``); a manifest's source is rebuilt only under the trust rules of
``model_config_from_source``."""

from onnx_pipeline.sources.loading import LoadedModel, eager_model_builder, load_model, model_config_from_source
from onnx_pipeline.sources.registry import (
    TINY_VGG_LABELS,
    ModelSpec,
    build_tiny_vgg,
    check_archive,
    model_defaults,
    resolve_spec,
)
from onnx_pipeline.sources.weights import rescale_random_weights

__all__ = [
    "TINY_VGG_LABELS",
    "LoadedModel",
    "ModelSpec",
    "build_tiny_vgg",
    "check_archive",
    "eager_model_builder",
    "load_model",
    "model_config_from_source",
    "model_defaults",
    "rescale_random_weights",
    "resolve_spec",
]
