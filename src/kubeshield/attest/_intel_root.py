"""Intel's SGX Root CA, pinned.

Provenance: "Intel SGX Root CA" (CN=Intel SGX Root CA, O=Intel Corporation, L=Santa Clara, ST=CA, C=US),
serial 22650cd65a9d3489f383b49552bf501b392706ac, valid 2018-05-21T10:45:10Z .. 2049-12-31T23:59:59Z,
as published by Intel at certificates.trustedservices.intel.com (Intel_SGX_Provisioning_Certification_RootCA)
and embedded in every DCAP PCK chain; the same certificate dcap-qvl pins (TRUSTED_ROOT_CA_DER). Its P-256
public key is :data:`INTEL_SGX_ROOT_PUBLIC_KEY`; the test suite checks the certificate against it.
"""

from __future__ import annotations

import base64

from cryptography import x509

__all__ = ["INTEL_SGX_ROOT_CA", "INTEL_SGX_ROOT_PUBLIC_KEY"]

INTEL_SGX_ROOT_PUBLIC_KEY = bytes.fromhex(
    "040ba9c4c0c0c86193a3fe23d6b02cda10a8bbd4e88e48b4458561a36e705525f5"
    "67918e2edc88e40d860bd0cc4ee26aacc988e505a953558c453f6b0904ae7394"
)

_DER_B64 = (
    "MIICjzCCAjSgAwIBAgIUImUM1lqdNInzg7SVUr9QGzknBqwwCgYIKoZIzj0EAwIwaDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJv"
    "b3QgQ0ExGjAYBgNVBAoMEUludGVsIENvcnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJ"
    "BgNVBAYTAlVTMB4XDTE4MDUyMTEwNDUxMFoXDTQ5MTIzMTIzNTk1OVowaDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0Ex"
    "GjAYBgNVBAoMEUludGVsIENvcnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYT"
    "AlVTMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEC6nEwMDIYZOj/iPWsCzaEKi71OiOSLRFhWGjbnBVJfVnkY4u3IjkDYYL"
    "0MxO4mqsyYjlBalTVYxFP2sJBK5zlKOBuzCBuDAfBgNVHSMEGDAWgBQiZQzWWp00ifODtJVSv1AbOScGrDBSBgNVHR8ESzBJ"
    "MEegRaBDhkFodHRwczovL2NlcnRpZmljYXRlcy50cnVzdGVkc2VydmljZXMuaW50ZWwuY29tL0ludGVsU0dYUm9vdENBLmRl"
    "cjAdBgNVHQ4EFgQUImUM1lqdNInzg7SVUr9QGzknBqwwDgYDVR0PAQH/BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwCgYI"
    "KoZIzj0EAwIDSQAwRgIhAOW/5QkR+S9CiSDcNoowLuPRLsWGf/Yi7GSX94BgwTwgAiEA4J0lrHoMs+Xo5o/sX6O9QWxHRAvZ"
    "UGOdRQ7cvqRXaqI="
)

INTEL_SGX_ROOT_CA = x509.load_der_x509_certificate(base64.b64decode(_DER_B64))
