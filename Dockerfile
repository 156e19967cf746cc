# The kubeshield image used by deploy/ (static pods, Helm chart, backup CronJob).
# Not built in this repository's CI (no container runtime there): build and scan it in your own pipeline.
#   docker build -t ghcr.io/kubeshield/kubeshield:0.1.0 .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# pkcs11, transit, awskms, backup and node extras; TPM support needs libtss2 and is left out of the base image
RUN pip install --no-cache-dir --prefix=/install '.[pkcs11,transit,awskms,backup,node]'

FROM python:3.11-slim-bookworm
COPY --from=build /install /usr/local
# an unprivileged user whose uid the manifests name (65532); sockets and keyrings come from hostPath/volumes
RUN useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin kubeshield
USER 65532:65532
ENTRYPOINT ["kubeshield"]
CMD ["--help"]
