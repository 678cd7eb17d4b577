"""Cluster managers: one module per backend; what they share, and everything a backend imports,
is in pydist.managers.base."""

from .local import LocalManager

__all__ = ["LocalManager", "SSHManager", "DockerManager", "KubernetesManager", "SlurmManager",
           "SGEManager", "ElasticManager"]


def __getattr__(name):
    """Backends import lazily, so using one never needs another's client library."""
    modules = {"SSHManager": "ssh", "DockerManager": "docker", "KubernetesManager": "kubernetes",
               "SlurmManager": "slurm", "SGEManager": "sge", "ElasticManager": "elastic"}
    if name in modules:
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{modules[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
