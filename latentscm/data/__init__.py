"""Data layer: random DAGs and SCMs, interventions, projections, the Dataset container and its I/O."""

from .dags import random_dag, random_noise_scales, random_weights
from .dataset import DataError, Dataset
from .images import IMAGE_LAYOUTS, render
from .projections import MLPProjection, linear_projection, mlp_projection, project, so_projection
from .scm import sample_latents, topological_order
from .simulate import IMAGE_SCALES, SimulationConfig, image_config, simulate

__all__ = [
    "Dataset", "DataError", "SimulationConfig", "simulate", "image_config", "IMAGE_SCALES", "render", "IMAGE_LAYOUTS", "random_dag", "random_weights",
    "random_noise_scales", "sample_latents", "topological_order", "MLPProjection", "linear_projection",
    "mlp_projection", "so_projection", "project",
]
