"""TokenReview/SubjectAccessReview/Event bodies and answers."""

from __future__ import annotations

import datetime as dt

import pytest

from kubeshield.kube import _reviews


def test_token_review_answer():
    review = _reviews.parse_token_review(
        {
            "status": {
                "authenticated": True,
                "user": {
                    "username": "system:serviceaccount:ns:app",
                    "uid": "u1",
                    "groups": ["g"],
                    "extra": {
                        "authentication.kubernetes.io/pod-name": ["p"],
                        "authentication.kubernetes.io/pod-uid": ["pu"],
                    },
                },
                "audiences": ["kubeshield"],
            }
        }
    )
    assert review.service_account == ("ns", "app") and review.pod_name == "p" and review.pod_uid == "pu"
    refused = _reviews.parse_token_review(
        {"status": {"authenticated": False, "user": {"username": "x"}, "error": "e" * 500}}
    )
    assert not refused.authenticated and refused.username == "" and len(refused.error) == 200
    assert refused.service_account is None and refused.pod_name is None
    with pytest.raises(ValueError):
        _reviews.token_review_body("", [])


def test_access_review_body():
    body = _reviews.access_review_body(
        user="u",
        groups=["g"],
        uid=None,
        extra={"k": ["v"]},
        verb="get",
        resource="secrets",
        group="",
        namespace="ns",
        name="s",
        subresource=None,
        non_resource_path=None,
    )
    assert body["spec"]["resourceAttributes"] == {
        "verb": "get",
        "group": "",
        "resource": "secrets",
        "namespace": "ns",
        "name": "s",
    }
    with pytest.raises(ValueError):
        _reviews.access_review_body(
            user="u",
            groups=[],
            uid=None,
            extra=None,
            verb="get",
            resource="secrets",
            group="",
            namespace=None,
            name=None,
            subresource=None,
            non_resource_path="/x",
        )


def test_event_body_truncates_and_refers():
    involved = {
        "apiVersion": "bitnami.com/v1alpha1",
        "kind": "SealedSecret",
        "metadata": {"name": "s", "namespace": "ns", "uid": "u", "resourceVersion": "3"},
    }
    ns, event = _reviews.event_body(
        involved,
        reason="Failed",
        message="m" * 5000,
        type_="Warning",
        component="c",
        action=None,
        clock=lambda: dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        rng=lambda n: b"\x01" * n,
    )
    assert ns == "ns" and event["metadata"]["name"] == "s.0101010101010101"
    assert len(event["message"]) == 1024 and event["firstTimestamp"] == "2026-01-02T03:04:05Z"
    assert event["involvedObject"]["uid"] == "u"
