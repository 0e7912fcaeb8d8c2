"""Building blocks of the HTTP layer: the exception handlers (``errors``) and the Prometheus metrics (``metrics``)."""
