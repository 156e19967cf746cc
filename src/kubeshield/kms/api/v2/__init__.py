"""Generated KMS v2 stubs. Do not edit."""
