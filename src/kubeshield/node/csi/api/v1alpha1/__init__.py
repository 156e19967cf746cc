"""Generated CSI provider v1alpha1 stubs. Do not edit."""
