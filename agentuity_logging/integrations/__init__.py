"""Integrations with the frameworks and libraries around an app; each imports its target lazily.

* :mod:`~agentuity_logging.integrations.asgi`: ``SessionMiddleware`` for Starlette, FastAPI and raw ASGI.
* :mod:`~agentuity_logging.integrations.wsgi`: ``SessionMiddleware`` for Flask and raw WSGI.
* :mod:`~agentuity_logging.integrations.errors`: the JSON error body for handled errors.
* :mod:`~agentuity_logging.integrations.httpx`, :mod:`~agentuity_logging.integrations.requests`: outgoing
  session and thread headers.
* :mod:`~agentuity_logging.integrations.loguru`: a patcher and a sink for loguru.
* :mod:`~agentuity_logging.integrations.otel`: OpenTelemetry trace IDs and a span bridge.

Importing this package imports nothing; a module whose library is missing raises
:class:`~agentuity_logging.MissingDependencyError` naming the extra to install.
"""
