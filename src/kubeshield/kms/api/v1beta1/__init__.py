"""Generated KMS v1beta1 stubs. Do not edit."""
