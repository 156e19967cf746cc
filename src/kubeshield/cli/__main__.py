"""``python -m kubeshield.cli``: the same command line as the ``kubeshield`` console script.

This is the invocation for interpreters started by something other than the console script, e.g. the
Gramine manifest in ``deploy/gramine/`` (whose entrypoint is the Python interpreter itself).
"""

from __future__ import annotations

from kubeshield.cli import run

__all__: list[str] = []

if __name__ == "__main__":
    run()
