"""The ``agentuity-logging`` command line: sessions, threads and logs from the local store, Loki or Datadog.

``_cli`` is the entry point (it checks for the ``cli`` extra before importing click and rich);
``_commands`` defines the commands; ``_sources`` the one interface every source implements (``local``
reads the SQLite session log store, ``_loki`` and ``_datadog`` query the backends the shippers fill);
``_render`` and ``_timeline`` turn the answers into tables, text, JSON and waterfalls.
"""
