"""kubeshield: an invisible shield for Kubernetes Secrets.

The package is layered (see docs/architecture.md); import the feature you need from its own package.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
