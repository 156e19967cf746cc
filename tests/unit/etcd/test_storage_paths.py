"""Resource <-> etcd path, exactly as kube-apiserver stores them, over the full built-in list.

``APISERVER_PATHS`` is copied by hand from kubernetes/kubernetes ``test/integration/etcd/data.go``
(``gvr(...)`` and its ``ExpectedEtcdPath``, namespace ``ns``), the apiserver's own storage-path test; it
is deliberately not derived from :mod:`kubeshield.etcd.paths`. The three pre-1.25 rows come from the
1.14-1.24 versions of that file.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubeshield.config.encryption import GroupResource, parse_encryption_config
from kubeshield.errors import ConfigError
from kubeshield.etcd.keys import parse_key
from kubeshield.etcd.paths import BUILTIN, known_resources
from kubeshield.etcd.store import KeyValue
from kubeshield.etcd.transformers import ChainSet, UnknownResourceError
from kubeshield.etcd.walk import iter_resources, walk_targets

# (group, resource, ExpectedEtcdPath)
APISERVER_PATHS = [
    ("", "configmaps", "/registry/configmaps/ns/cm1"),
    ("", "services", "/registry/services/specs/ns/service1"),
    ("", "podtemplates", "/registry/podtemplates/ns/pt1name"),
    ("", "pods", "/registry/pods/ns/pod1"),
    ("", "endpoints", "/registry/services/endpoints/ns/ep1name"),
    ("", "resourcequotas", "/registry/resourcequotas/ns/rq1name"),
    ("", "limitranges", "/registry/limitranges/ns/lr1name"),
    ("", "namespaces", "/registry/namespaces/namespace1"),
    ("", "nodes", "/registry/minions/node1"),
    ("", "persistentvolumes", "/registry/persistentvolumes/pv1name"),
    ("", "events", "/registry/events/ns/event1"),
    ("", "persistentvolumeclaims", "/registry/persistentvolumeclaims/ns/pvc1"),
    ("", "serviceaccounts", "/registry/serviceaccounts/ns/sa1name"),
    ("", "secrets", "/registry/secrets/ns/secret1"),
    ("", "replicationcontrollers", "/registry/controllers/ns/rc1"),
    ("apps", "daemonsets", "/registry/daemonsets/ns/ds6"),
    ("apps", "deployments", "/registry/deployments/ns/deployment4"),
    ("apps", "statefulsets", "/registry/statefulsets/ns/ss3"),
    ("apps", "replicasets", "/registry/replicasets/ns/rs3"),
    ("apps", "controllerrevisions", "/registry/controllerrevisions/ns/crs3"),
    ("autoscaling", "horizontalpodautoscalers", "/registry/horizontalpodautoscalers/ns/hpa2"),
    ("batch", "jobs", "/registry/jobs/ns/job1"),
    ("batch", "cronjobs", "/registry/cronjobs/ns/cjv1"),
    ("certificates.k8s.io", "certificatesigningrequests", "/registry/certificatesigningrequests/csr2"),
    ("certificates.k8s.io", "clustertrustbundles", "/registry/clustertrustbundles/example.com:signer:abc"),
    ("certificates.k8s.io", "podcertificaterequests", "/registry/podcertificaterequests/ns/req-1"),
    ("coordination.k8s.io", "leases", "/registry/leases/ns/leasev1"),
    ("coordination.k8s.io", "leasecandidates", "/registry/leasecandidates/ns/leasecandidatev1beta1"),
    ("discovery.k8s.io", "endpointslices", "/registry/endpointslices/ns/slicev1"),
    ("networking.k8s.io", "ingresses", "/registry/ingress/ns/ingress3"),
    ("networking.k8s.io", "ingressclasses", "/registry/ingressclasses/ingressclass3"),
    ("networking.k8s.io", "networkpolicies", "/registry/networkpolicies/ns/np2"),
    ("networking.k8s.io", "ipaddresses", "/registry/ipaddresses/192.168.2.3"),
    ("networking.k8s.io", "servicecidrs", "/registry/servicecidrs/range-b2"),
    ("policy", "poddisruptionbudgets", "/registry/poddisruptionbudgets/ns/pdbv1"),
    (
        "storagemigration.k8s.io",
        "storageversionmigrations",
        "/registry/storageversionmigrations/test-migration",
    ),
    ("flowcontrol.apiserver.k8s.io", "flowschemas", "/registry/flowschemas/fs-3"),
    (
        "flowcontrol.apiserver.k8s.io",
        "prioritylevelconfigurations",
        "/registry/prioritylevelconfigurations/conf5",
    ),
    ("storage.k8s.io", "volumeattachments", "/registry/volumeattachments/va3"),
    ("storage.k8s.io", "volumeattributesclasses", "/registry/volumeattributesclasses/vac3"),
    ("storage.k8s.io", "storageclasses", "/registry/storageclasses/sc2"),
    ("storage.k8s.io", "csistoragecapacities", "/registry/csistoragecapacities/ns/csc-12345-3"),
    ("storage.k8s.io", "csinodes", "/registry/csinodes/csini2"),
    ("storage.k8s.io", "csidrivers", "/registry/csidrivers/csid2"),
    ("rbac.authorization.k8s.io", "roles", "/registry/roles/ns/role3"),
    ("rbac.authorization.k8s.io", "clusterroles", "/registry/clusterroles/crole3"),
    ("rbac.authorization.k8s.io", "rolebindings", "/registry/rolebindings/ns/roleb3"),
    ("rbac.authorization.k8s.io", "clusterrolebindings", "/registry/clusterrolebindings/croleb3"),
    (
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        "/registry/validatingwebhookconfigurations/hook2",
    ),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "/registry/mutatingwebhookconfigurations/hook2",
    ),
    (
        "admissionregistration.k8s.io",
        "validatingadmissionpolicies",
        "/registry/validatingadmissionpolicies/vap1",
    ),
    (
        "admissionregistration.k8s.io",
        "validatingadmissionpolicybindings",
        "/registry/validatingadmissionpolicybindings/pb1",
    ),
    (
        "admissionregistration.k8s.io",
        "mutatingadmissionpolicies",
        "/registry/mutatingadmissionpolicies/map1v1",
    ),
    (
        "admissionregistration.k8s.io",
        "mutatingadmissionpolicybindings",
        "/registry/mutatingadmissionpolicybindings/mpb1v1",
    ),
    ("scheduling.k8s.io", "priorityclasses", "/registry/priorityclasses/pc3"),
    ("scheduling.k8s.io", "workloads", "/registry/workloads/ns/w1"),
    ("scheduling.k8s.io", "podgroups", "/registry/podgroups/ns/pg1"),
    ("apiregistration.k8s.io", "apiservices", "/registry/apiregistration.k8s.io/apiservices/as2.foo.com"),
    (
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "/registry/apiextensions.k8s.io/customresourcedefinitions/"
        "openshiftwebconsoleconfigs.webconsole2.operator.openshift.io",
    ),
    ("cr.bar.com", "foos", "/registry/cr.bar.com/foos/ns/cr1foo"),
    ("custom.fancy.com", "pants", "/registry/custom.fancy.com/pants/cr2pant"),
    ("awesome.bears.com", "pandas", "/registry/awesome.bears.com/pandas/cr3panda"),
    ("random.numbers.com", "integers", "/registry/random.numbers.com/integers/fortytwo"),
    ("node.k8s.io", "runtimeclasses", "/registry/runtimeclasses/rc3"),
    ("resource.k8s.io", "devicetaintrules", "/registry/devicetaintrules/taint1name"),
    ("resource.k8s.io", "resourcepoolstatusrequests", "/registry/resourcepoolstatusrequests/rpsr1name"),
    ("resource.k8s.io", "deviceclasses", "/registry/deviceclasses/class4name"),
    ("resource.k8s.io", "resourceclaims", "/registry/resourceclaims/ns/claim4name"),
    ("resource.k8s.io", "resourceclaimtemplates", "/registry/resourceclaimtemplates/ns/claimtemplate4name"),
    ("resource.k8s.io", "resourceslices", "/registry/resourceslices/node4slice"),
    ("internal.apiserver.k8s.io", "storageversions", "/registry/storageversions/sv1.test"),
    # from data.go of older releases
    ("policy", "podsecuritypolicies", "/registry/podsecuritypolicy/psp2"),
    ("resource.k8s.io", "podschedulingcontexts", "/registry/podschedulingcontexts/ns/pod1name"),
]
# the apiserver stores these under another resource's path (AddCohabitatingResources)
COHABITING = [
    ("events.k8s.io", "events", "/registry/events/ns/event3", "events"),
    ("extensions", "ingresses", "/registry/ingress/ns/ingress1", "ingresses.networking.k8s.io"),
    ("extensions", "podsecuritypolicies", "/registry/podsecuritypolicy/psp1", "podsecuritypolicies.policy"),
    ("extensions", "deployments", "/registry/deployments/ns/d", "deployments.apps"),
]


def _name(group: str, resource: str) -> str:
    return f"{resource}.{group}" if group else resource


@pytest.mark.parametrize(("group", "resource", "path"), APISERVER_PATHS)
def test_every_key_maps_back_to_its_group_resource(group: str, resource: str, path: str) -> None:
    parsed = parse_key(path.encode(), prefix="/registry")
    assert parsed is not None and parsed.known
    assert parsed.resource == _name(group, resource)
    assert parsed.encryption_resource == _name(group, resource)
    *_, last = path.split("/")
    assert parsed.name == last
    assert parsed.namespace == ("ns" if "/ns/" in path else None)


@pytest.mark.parametrize(("group", "resource", "path"), APISERVER_PATHS)
def test_every_resource_is_walked_under_the_apiservers_path(group: str, resource: str, path: str) -> None:
    targets = walk_targets("/registry", _name(group, resource))
    assert len(targets) == 1 and not targets[0].exact
    assert path.encode().startswith(targets[0].key)
    # and under a non-default --etcd-prefix (the uuid prefix of the apiserver's integration tests)
    moved = walk_targets("/0b7c/registry/", _name(group, resource))[0].key
    assert moved == b"/0b7c" + targets[0].key


@pytest.mark.parametrize(("group", "resource", "path", "primary"), COHABITING)
def test_cohabiting_resources_share_the_primary_storage(
    group: str, resource: str, path: str, primary: str
) -> None:
    assert path.encode().startswith(walk_targets("/registry", _name(group, resource))[0].key)
    parsed = parse_key(path.encode(), prefix="/registry")
    assert parsed is not None and parsed.resource == primary


def test_the_table_is_the_apiservers_list_and_nothing_else() -> None:
    crd_groups = {"cr.bar.com", "custom.fancy.com", "awesome.bears.com", "random.numbers.com"}
    expected = {GroupResource(g, r) for g, r, _ in APISERVER_PATHS if g not in crd_groups}
    internal = {
        GroupResource("", "serviceipallocations"),
        GroupResource("", "servicenodeportallocations"),
        GroupResource("", "apiserveripinfo"),
    }
    assert set(known_resources()) == expected | internal


def test_special_prefixes_are_not_the_group_path() -> None:
    """The defect of issue 15 item 8: deployments.apps was walked under /registry/apps/deployments/."""
    assert walk_targets("/registry", "deployments.apps")[0].key == b"/registry/deployments/"
    assert walk_targets("/registry", "nodes")[0].key == b"/registry/minions/"
    assert walk_targets("/registry", "services")[0].key == b"/registry/services/specs/"
    assert walk_targets("/registry", "ingresses.networking.k8s.io")[0].key == b"/registry/ingress/"


def test_range_allocations_are_single_keys_under_the_services_rules() -> None:
    targets = walk_targets("/registry", "serviceipallocations")
    assert [(t.key, t.exact) for t in targets] == [
        (b"/registry/ranges/serviceips", True),
        (b"/registry/ranges/secondaryserviceips", True),
    ]
    parsed = parse_key(b"/registry/ranges/servicenodeports", prefix="/registry")
    assert parsed is not None
    assert (parsed.resource, parsed.name, parsed.encryption_resource) == (
        "servicenodeportallocations",
        "servicenodeports",
        "services",
    )
    lease = parse_key(b"/registry/masterleases/10.0.0.1", prefix="/registry")
    assert lease is not None and lease.encryption_resource == "apiServerIPInfo"


def test_a_core_name_of_a_grouped_resource_names_the_group() -> None:
    with pytest.raises(ConfigError, match=r"deployments\.apps"):
        walk_targets("/registry", "deployments")
    with pytest.raises(ConfigError, match=r"ingresses\.networking\.k8s\.io"):
        walk_targets("/registry", "ingresses")


def test_unknown_built_in_paths_are_reported_not_guessed() -> None:
    parsed = parse_key(b"/registry/frobnicators/ns/x", prefix="/registry")
    assert parsed is not None
    assert (parsed.resource, parsed.known, parsed.encryption_resource) == ("frobnicators", False, None)
    config = _config([("*.*", {"identity": {}})])
    with pytest.raises(UnknownResourceError, match="cannot tell which encryption rules apply"):
        ChainSet(config).chain(parsed.encryption_resource)
    # a newer built-in of a known group is walked where the storage factory puts it by default
    assert walk_targets("/registry", "frobnicators.apps")[0].key == b"/registry/frobnicators/"


def test_wildcard_selections() -> None:
    keys = {t.key for t in walk_targets("/registry", "*.apps")}
    assert keys == {
        b"/registry/daemonsets/",
        b"/registry/deployments/",
        b"/registry/statefulsets/",
        b"/registry/replicasets/",
        b"/registry/controllerrevisions/",
    }
    assert walk_targets("/registry", "*.example.com") == walk_targets("/registry", "*.example.com")
    assert walk_targets("/registry", "*.example.com")[0].key == b"/registry/example.com/"
    core = {t.key for t in walk_targets("/registry", "*.")}
    assert b"/registry/secrets/" in core and b"/registry/minions/" in core
    assert b"/registry/deployments/" not in core
    assert walk_targets("/registry", "*.*")[0].key == b"/registry/"


def test_overlapping_selections_read_each_key_once() -> None:
    class Source:
        def __init__(self) -> None:
            self.reads: list[bytes] = []

        def iter_prefix(self, prefix: bytes, *, page_size: int = 1000):
            self.reads.append(prefix)
            return iter([KeyValue(key=prefix + b"x", value=b"", mod_revision=1)])

        def get(self, key: bytes):
            return None

        def close(self) -> None:
            pass

    source = Source()
    out = list(iter_resources(source, prefix="/registry", resources=["secrets", "*.*", "secrets"]))
    assert source.reads == [b"/registry/"] and len(out) == 1


@settings(deadline=None)
@given(
    group=st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){1,3}", fullmatch=True),
    plural=st.from_regex(r"[a-z][a-z0-9]{0,15}", fullmatch=True),
    namespace=st.none() | st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True),
    name=st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True),
)
def test_custom_resources_round_trip(group: str, plural: str, namespace: str | None, name: str) -> None:
    resource = f"{plural}.{group}"
    if GroupResource(group, plural) in set(known_resources()):
        return
    base = walk_targets("/registry", resource)[0].key
    assert base == f"/registry/{group}/{plural}/".encode()
    key = base + (f"{namespace}/" if namespace else "").encode() + name.encode()
    parsed = parse_key(key, prefix="/registry")
    assert parsed is not None
    assert (parsed.resource, parsed.namespace, parsed.name) == (resource, namespace, name)


@pytest.mark.parametrize(
    "entry", [sp for sp in BUILTIN if not sp.alias], ids=lambda sp: str(sp.group_resource)
)
def test_every_table_entry_round_trips(entry) -> None:
    key = f"/registry/{entry.path}".encode() if entry.singleton else f"/registry/{entry.path}/n".encode()
    parsed = parse_key(key, prefix="/registry")
    assert parsed is not None and parsed.resource == str(entry.group_resource)
    assert entry.source  # every entry says where it came from


# -- which rules apply: exact, *.<group> (every resource of the group), *. (core only), *.* --------------

_KEY = base64.b64encode(bytes(32)).decode()


def _config(rules: list[tuple[str, dict]]):
    return parse_encryption_config(
        {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "EncryptionConfiguration",
            "resources": [
                {"resources": [names] if isinstance(names, str) else names, "providers": [p]}
                for names, p in rules
            ],
        }
    )


def _box(name: str) -> dict:
    return {"secretbox": {"keys": [{"name": name, "secret": _KEY}]}}


def _applied(config, path: str) -> str:
    parsed = parse_key(path.encode(), prefix="/registry")
    assert parsed is not None
    providers = config.providers_for(parsed.encryption_resource)
    return "identity" if providers is None else providers[0].keys[0].name


@pytest.mark.parametrize(("group", "resource", "path"), APISERVER_PATHS)
def test_group_wildcards_cover_every_built_in_and_custom_resource(
    group: str, resource: str, path: str
) -> None:
    config = _config(
        [("secrets", _box("exact")), (f"*.{group}" if group else "*.", _box("group")), ("*.*", _box("any"))]
    )
    want = "exact" if (group, resource) == ("", "secrets") else "group"
    assert _applied(config, path) == want


@pytest.mark.parametrize(("group", "resource", "path"), APISERVER_PATHS)
def test_core_wildcard_covers_only_the_core_group(group: str, resource: str, path: str) -> None:
    config = _config([("*.", _box("core"))])
    assert _applied(config, path) == ("core" if group == "" else "identity")


def test_apps_wildcard_matches_deployments_and_core_wildcard_does_not() -> None:
    """Issue 15 item 8: ``*.apps`` did not match deployments.apps; ``*.`` wrongly did."""
    config = _config([("*.apps", _box("apps"))])
    assert _applied(config, "/registry/deployments/ns/d") == "apps"
    config = _config([("*.", _box("core"))])
    assert _applied(config, "/registry/deployments/ns/d") == "identity"
    assert _applied(config, "/registry/secrets/ns/s") == "core"


def test_ranges_follow_the_services_rules() -> None:
    config = _config([("services", _box("svc"))])
    assert _applied(config, "/registry/ranges/serviceips") == "svc"
    assert _applied(config, "/registry/masterleases/10.0.0.1") == "identity"
    assert _applied(_config([("*.", _box("core"))]), "/registry/masterleases/10.0.0.1") == "core"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            [("*.", _box("a")), ("secrets", _box("b"))],
            r"resources\[1\]\.resources\[0\]: resource 'secrets' is masked by earlier rule '\*\.'",
        ),
        ([("*.*", _box("a")), ("*.apps", _box("b"))], r"masked by earlier rule '\*\.\*'"),
        ([(["secrets", "*."], _box("a"))], "overlap in one list"),
        ([(["*.*", "deployments.apps"], _box("a"))], "overlap in one list"),
        ([(["secrets", "secrets"], _box("a"))], "listed more than once"),
    ],
)
def test_masked_and_overlapping_rules_are_refused_like_the_apiserver(rules, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(rules)


def test_a_name_in_two_lists_gets_both_provider_lists_in_order() -> None:
    config = _config([("secrets", _box("first")), ("configmaps", _box("cm")), ("secrets", _box("second"))])
    providers = config.providers_for("secrets")
    assert providers is not None
    assert [p.keys[0].name for p in providers] == ["first", "second"]


def test_a_group_wildcard_before_the_catch_all_is_allowed() -> None:
    config = _config([("*.apps", _box("apps")), ("*.*", _box("any"))])
    assert _applied(config, "/registry/deployments/ns/d") == "apps"
    assert _applied(config, "/registry/configmaps/ns/c") == "any"
