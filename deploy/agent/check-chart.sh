#!/usr/bin/env bash
# Renders deploy/agent/helm in each mode with `helm template` and checks the shape of what comes
# out (Python + PyYAML): one non-root, read-only, capability-free replica; RBAC limited to the
# resources the agent applies, with no RBAC, impersonation or wildcard rights; the state Secret's
# Role limited by name (plus `create`, which names cannot limit); required values enforced.
# Usage: deploy/agent/check-chart.sh   (needs helm 3 and python3 with PyYAML on PATH)
set -euo pipefail
chart="$(cd "$(dirname "${BASH_SOURCE[0]}")/helm" && pwd)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

base=(--namespace qleet-agent --set controlPlaneUrl=https://qleet.example/cp/0b6f2d4e-8c1a-4f3e-9a7b-2c5d8e1f0a93 --set registrationToken=qleet_reg_test)
helm lint "$chart" "${base[@]}" >/dev/null
helm template agent "$chart" "${base[@]}" --set serviceAccount.roleArn=arn:aws:iam::123456789012:role/qleet-agent-runner >"$out/secret.yaml"
helm template agent "$chart" "${base[@]}" --set state.mode=file --set httpsProxy=http://proxy:3128 >"$out/file.yaml"
helm template agent "$chart" "${base[@]}" --set rbac.clusterWide=false --set 'rbac.namespaces={shop,web}' >"$out/namespaced.yaml"
for bad in "--set registrationToken=qleet_reg_x" "--set controlPlaneUrl=https://q/cp/x" "--set controlPlaneUrl=https://q/cp/x --set registrationToken=t --set state.mode=disk"; do
  # shellcheck disable=SC2086
  if helm template agent "$chart" $bad >/dev/null 2>&1; then
    echo "check-chart: rendering with '$bad' should have failed" >&2; exit 1
  fi
done

python3 - "$out" <<'PY'
import sys, yaml, pathlib
out = pathlib.Path(sys.argv[1])
def docs(name):
    return [d for d in yaml.safe_load_all((out / name).read_text()) if d]
def one(ds, kind, name=None):
    found = [d for d in ds if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]
ALLOWED = {
    "": {"namespaces", "pods", "services", "configmaps", "secrets", "serviceaccounts", "events"},
    "apps": {"deployments", "statefulsets", "replicasets"},
    "networking.k8s.io": {"ingresses"}, "batch": {"jobs"}, "cert-manager.io": {"certificates"},
    "externaldns.k8s.io": {"dnsendpoints"}, "events.k8s.io": {"events"},
}
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
READ_ONLY = {"pods", "replicasets", "events"}
def check_rules(rules):
    for r in rules:
        assert "*" not in r["verbs"] and set(r["verbs"]) <= VERBS, r
        for g in r["apiGroups"]:
            assert g in ALLOWED, r
            for res in r["resources"]:
                assert res in ALLOWED[g], (g, res)
                if res in READ_ONLY:
                    assert set(r["verbs"]) <= {"get", "list", "watch"}, r

for name in ["secret.yaml", "file.yaml", "namespaced.yaml"]:
    ds = docs(name)
    dep = one(ds, "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    [c] = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]
    env = {e["name"]: e for e in c["env"]}
    assert env["QLEET_AGENT_URL"]["value"].endswith("/cp/0b6f2d4e-8c1a-4f3e-9a7b-2c5d8e1f0a93")
    assert env["QLEET_AGENT_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert env["QLEET_AGENT_CONCURRENCY"]["value"] == "4"
    token = one(ds, "Secret", "agent-qleet-agent-registration")
    assert token["stringData"]["token"] == "qleet_reg_test"
    sa = one(ds, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    for kind in ("ClusterRole", "Role"):
        for role in (d for d in ds if d["kind"] == kind):
            check_rules(role["rules"])
    assert not any(d["kind"] in ("ClusterRole", "Role") and any(
        "rbac.authorization.k8s.io" in r["apiGroups"] for r in d["rules"]) for d in ds)
    if name in ("secret.yaml", "namespaced.yaml"):
        # The default mode: the agent keeps its identity in a Secret it creates itself.
        assert c["args"] == ["--state-secret", "qleet-agent/agent-qleet-agent-state"]
        state = one(ds, "Role", "agent-qleet-agent-state")
        assert state["metadata"]["namespace"] == "qleet-agent"
        assert state["rules"] == [{"apiGroups": [""], "resources": ["secrets"],
                                   "resourceNames": ["agent-qleet-agent-state"],
                                   "verbs": ["get", "update"]},
                                  {"apiGroups": [""], "resources": ["secrets"],
                                   "verbs": ["create"]}]
        binding = one(ds, "RoleBinding", "agent-qleet-agent-state")
        assert binding["roleRef"]["name"] == "agent-qleet-agent-state"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                        "namespace": "qleet-agent"}]
        assert not [d for d in ds if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-state")]
        assert not [v for v in pod.get("volumes", []) if v["name"] == "state"]
    if name == "secret.yaml":
        assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/qleet-agent-runner")
        one(ds, "ClusterRoleBinding", "agent-qleet-agent-workloads")
    if name == "file.yaml":
        assert c["args"] == ["--state-file", "/var/lib/qleet-agent/state.json"]
        assert env["HTTPS_PROXY"]["value"] == "http://proxy:3128" and "NO_PROXY" in env
        assert not [d for d in ds if d["kind"] == "Role"]
    if name == "namespaced.yaml":
        assert not [d for d in ds if d["kind"] == "ClusterRoleBinding" and d["metadata"]["name"].endswith("-workloads")]
        bindings = [d for d in ds if d["kind"] == "RoleBinding" and d["metadata"]["name"].endswith("-workloads")]
        assert sorted(b["metadata"]["namespace"] for b in bindings) == ["shop", "web"]
print("check-chart: 3 renderings, 3 refused value sets: ok")
PY
