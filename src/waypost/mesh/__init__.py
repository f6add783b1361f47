"""The resolved mesh: pure functions from resources to an immutable MeshSnapshot (no I/O, no clocks)."""

from .addresses import AddressPlan
from .build import address_assignments, build
from .model import MeshSnapshot

__all__ = ["AddressPlan", "MeshSnapshot", "address_assignments", "build"]
