"""Generated gRPC stubs for the Secrets Store CSI provider API (protos/csi/v1alpha1/).

Do not edit.

Regenerate with: .venv/bin/python scripts/gen_protos.py   (or: make protos)
"""
