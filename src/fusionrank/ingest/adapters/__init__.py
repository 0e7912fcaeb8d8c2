"""Dataset adapters, registered by name in :data:`ADAPTERS`, each with its options model."""
from .base import (ADAPTERS, Adapter, AdapterOptions, LimitedOptions, adapter_options, describe_options, get_adapter,
                   options_markdown, options_model, parse_option_strings)
from . import fashion44k, native  # noqa: F401  (registration)

try:  # adapters added by other modules register themselves on import
    from . import esci, wands  # noqa: F401
except ImportError:  # pragma: no cover - during development one may be absent
    pass

__all__ = ["ADAPTERS", "Adapter", "AdapterOptions", "LimitedOptions", "adapter_options", "describe_options", "get_adapter",
           "options_markdown", "options_model", "parse_option_strings"]
