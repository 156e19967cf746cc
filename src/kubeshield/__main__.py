"""``python -m kubeshield``: the same command line as the ``kubeshield`` console script."""

from __future__ import annotations

from kubeshield.cli import run

__all__: list[str] = []

if __name__ == "__main__":
    run()
