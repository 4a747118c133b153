"""``python -m taskiq_flow.factory.cli``: the ``taskiq-flow`` command without its script."""

from taskiq_flow.factory.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
