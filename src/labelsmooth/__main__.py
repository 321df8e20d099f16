"""``python -m labelsmooth``: the same program as the ``labelsmooth`` command."""

from labelsmooth.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
