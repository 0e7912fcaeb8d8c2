"""Dataset adapters, registered by name in :data:`ADAPTERS`."""
from .base import ADAPTERS, Adapter, get_adapter
from . import fashion44k, native  # noqa: F401  (registration)

try:  # adapters added by other modules register themselves on import
    from . import esci, wands  # noqa: F401
except ImportError:  # pragma: no cover - during development one may be absent
    pass

__all__ = ["ADAPTERS", "Adapter", "get_adapter"]
