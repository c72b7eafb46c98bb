"""Source rewards and judges (the simulated human), swapped by name from recipes."""
from reward_sources.registry import Context, RegistryError, build_judge, build_source

__all__ = ["Context", "RegistryError", "build_judge", "build_source"]
