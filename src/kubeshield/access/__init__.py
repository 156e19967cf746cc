"""Secure kubectl: cluster credentials that live only in memory, bound to a person, behind a local proxy.

Modules (each named for what it holds):

- ``credential``: ``ClusterCredential``, what the agent holds for one context (never printed).
- the agent (per-user daemon, SO_PEERCRED-checked unix socket, memory-only credentials), its client,
  the sealed credential store and kubeconfig import;
- the local proxy (https on 127.0.0.1 with a local CA and a per-session bearer secret, forwarding to
  the apiserver with the agent's credential, streaming upgrades, Secret audit log and redaction);
- the exec-credential plugin and the secret-free kubeconfig;
- the login relay (OIDC device and auth-code+PKCE flows, short-lived client certificates signed by a
  CA whose key a kubeshield KeyBackend holds) and ``access login``.

See docs/access.md.
"""
