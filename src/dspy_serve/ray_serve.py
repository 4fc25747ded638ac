"""The stable import path that Ray config files and KubeRay manifests name.

``import_path: dspy_serve.ray_serve:app_builder`` is written into deployment files that outlive
any one release, so it stays here while the code lives in :mod:`dspy_serve.deploy.ray_serve`.
"""

from dspy_serve.deploy.ray_serve import app_builder

__all__ = ["app_builder"]
