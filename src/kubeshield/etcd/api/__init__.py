"""Generated gRPC stubs for the subset of etcd v3 we use (see protos/etcd/). Do not edit."""
