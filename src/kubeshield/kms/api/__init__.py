"""Generated gRPC stubs for the KMS plugin APIs (protos/kms/{v2,v1beta1}/). Do not edit.

Regenerate with: .venv/bin/python scripts/gen_protos.py   (or: make protos)
"""
