"""What outlives a request: thread stores (memory, SQLite, Redis), state encryption, the session log store.

``_crypto`` seals thread state with AES-256-GCM under a rotating keyring; ``_threads`` defines the
:class:`~agentuity_logging._storage._threads.ThreadStore` contract that the ``_threads_*`` backends
implement; ``_registry`` plugs a store under ``session()`` as its thread registry; ``_logstore`` keeps
sessions and their log records for the CLI.
"""
