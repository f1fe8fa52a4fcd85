"""``python -m agentuity_logging``: the ``agentuity-logging`` command line."""

from agentuity_logging._inspection._cli import main

if __name__ == "__main__":
    main()
