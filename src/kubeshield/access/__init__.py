"""Secure kubectl: cluster credentials that live only in memory, bound to a person, behind a local proxy.

Modules (each named for what it holds):

- ``credential``: ``ClusterCredential`` and ``ClusterEndpoint`` (never printed with a secret);
- the agent: ``agent`` (the per-user daemon, memory-only credentials, proxy sessions), ``agent_protocol``
  (length-prefixed JSON over the unix socket), ``agent_client``, ``peer`` (SO_PEERCRED and the
  ``--allow-exe`` check), ``local_ca`` (the in-memory CA of the proxy's serving certificates);
- ``store`` (the sealed credential store) and ``kubeconfig_import``; ``kubeconfig_out`` (the
  secret-free kubeconfig) and ``exec_credential`` (the client-go exec plugin's answers);
- the proxy: ``proxy`` (``LocalProxy``), ``_http1`` (the strict HTTP/1.1 request-head parser),
  ``upstream`` (the TLS connection pool to the apiserver), ``audit`` (the Secret audit log),
  ``redact`` (Secret values replaced unless revealed);
- the login: ``idtoken`` (ID token verification), ``oidc`` (device and auth-code+PKCE flows),
  ``login``, ``relay`` (the relay service), ``relay_ca`` (its CA, key wrapped by a KeyBackend),
  ``relay_settings``, ``relay_attest`` (TPM attestation between relay and login).

See docs/access.md.
"""
