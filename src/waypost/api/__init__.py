"""The user's resources, typed and validated, loaded from the manifests they `kubectl apply`."""

from .diagnostics import Diagnostic, Severity
from .load import KINDS, NOT_SUPPORTED_YET, LoadResult, load_paths, load_text
from .meta import Resource

__all__ = ["Diagnostic", "KINDS", "LoadResult", "NOT_SUPPORTED_YET", "Resource", "Severity", "load_paths", "load_text"]
