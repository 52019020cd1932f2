#!/usr/bin/env bash
# Smoke test of the built binary, the way an operator meets it: `switchyard up` on embedded
# defaults, then grpcurl-style calls with `buf curl` through server reflection. Checks the
# acceptance points that need the real process: health and reflection without a token, auth and
# tenancy, the audit log and its tamper detection, a restart that loses nothing, and no secret in
# the logs or in plaintext on disk.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/switchyard/target}"
BUF="${BUF:-${SWITCHYARD_TOOLS:-$HOME/.cache/switchyard/tools}/node_modules/.bin/buf}"
[ -x "$BUF" ] || { echo "buf not found at $BUF (tests/run installs it)" >&2; exit 1; }

cargo build -q -p switchyard --locked
BIN="$CARGO_TARGET_DIR/debug/switchyard"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-smoke.XXXXXX")
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
GRPC_PORT=$(free_port); HTTP_PORT=$(free_port)
export SWITCHYARD_GRPC_ADDR="127.0.0.1:$GRPC_PORT" SWITCHYARD_HTTP_ADDR="127.0.0.1:$HTTP_PORT"
export SWITCHYARD_DATA_DIR="$WORK/data"
URL="http://127.0.0.1:$GRPC_PORT"
SVC="$URL/switchyard.credentials.v1.CredentialService"
SECRET="sk-smoke-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
SECRET_B64=$(printf %s "$SECRET" | base64 -w0)

ok() { printf '    ok: %s\n' "$*"; }
die() { printf '\nSMOKE FAILED: %s\n' "$*" >&2; [ -f "$WORK/stderr" ] && tail -n 30 "$WORK/stderr" >&2; exit 1; }
start() {
  "$BIN" up >>"$WORK/stdout" 2>>"$WORK/stderr" &
  PID=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$PID" 2>/dev/null || die "the server exited at start"
    sleep 0.1
  done
  die "the server did not become ready"
}
stop() {
  kill -TERM "$PID"
  wait "$PID" || die "the server did not exit cleanly on SIGTERM"
  PID=""
}
# call METHOD TOKEN JSON: prints the response (or the error JSON) and never fails.
call() {
  local method=$1 token=$2 body=$3
  local auth=()
  [ -n "$token" ] && auth=(-H "authorization: Bearer $token")
  "$BUF" curl --protocol grpc --http2-prior-knowledge "${auth[@]}" -d "$body" "$SVC/$method" 2>&1 || true
}
# has_code METHOD TOKEN JSON CODE: whether the call fails with that gRPC code.
has_code() { local out; out=$(call "$1" "$2" "$3"); grep -q "\"code\": \"$4\"" <<<"$out"; }
field() { python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(eval("d"+sys.argv[1]))' "$1"; }

echo "    starting switchyard up on $URL"
start
grep -q "development token" "$WORK/stdout" || die "the first run printed no development token"

# Health and reflection need no token.
# Captured before matching: `grep -q` stopping early would break the pipe under pipefail.
health=$("$BUF" curl --protocol grpc --http2-prior-knowledge -d '{}' "$URL/grpc.health.v1.Health/Check")
grep -q SERVING <<<"$health" || die "health is not SERVING"
methods=$("$BUF" curl --protocol grpc --http2-prior-knowledge --list-methods "$URL")
grep -q "switchyard.credentials.v1.CredentialService/AccessCredential" <<<"$methods" || die "reflection does not list CredentialService"
grep -q "switchyard.ai.v1.AiService/StreamComplete" <<<"$methods" || die "reflection does not list AiService"
ok "health SERVING and reflection lists CredentialService and AiService, without a token"

has_code GetCredential "" '{"name":"credentials/x"}' unauthenticated || die "no token did not give UNAUTHENTICATED"
ok "no token: UNAUTHENTICATED"

ACME=$("$BIN" token --tenant acme --subject alice)
GLOBEX=$("$BIN" token --tenant globex --subject bob)
READER=$("$BIN" token --tenant acme --subject carol --scope credentials.read)

out=$(call CreateCredential "$ACME" "{\"credential_id\":\"openai-prod\",\"credential\":{\"kind\":\"CREDENTIAL_KIND_API_KEY\",\"provider\":\"openai\"},\"payload\":{\"data\":\"$SECRET_B64\"}}")
[ "$(echo "$out" | field '["credential"]["name"]')" = credentials/openai-prod ] || die "create failed: $out"
out=$(call RotateCredential "$ACME" "{\"name\":\"credentials/openai-prod\",\"payload\":{\"data\":\"$SECRET_B64\"}}")
[ "$(echo "$out" | field '["credential"]["currentVersion"]')" = 2 ] || die "rotate failed: $out"
out=$(call AccessCredential "$ACME" '{"name":"credentials/openai-prod"}')
[ "$(echo "$out" | field '["payload"]["data"]')" = "$SECRET_B64" ] || die "access returned the wrong material: $out"
ok "tenant acme creates, rotates and accesses a credential"

has_code GetCredential "$GLOBEX" '{"name":"credentials/openai-prod"}' not_found || die "tenant globex could see acme's credential"
has_code AccessCredential "$GLOBEX" '{"name":"credentials/openai-prod"}' not_found || die "tenant globex could access acme's credential"
ok "tenant globex gets NOT_FOUND"

has_code AccessCredential "$READER" '{"name":"credentials/openai-prod"}' permission_denied || die "a token without credentials.access was not refused"
ok "a token without the access scope: PERMISSION_DENIED"

out=$(call CreateCredential "$ACME" '{"credential_id":"Bad Name","credential":{"kind":"CREDENTIAL_KIND_API_KEY"},"payload":{"data":"eA=="}}')
grep -q '"code": "invalid_argument"' <<<"$out" && grep -q 'google.rpc.BadRequest' <<<"$out" || die "a malformed name was not INVALID_ARGUMENT with field violations: $out"
has_code ListCredentials "$ACME" '{"page_token":"not-a-token"}' invalid_argument || die "a bad page token was accepted"
has_code UpdateCredential "$ACME" '{"credential":{"name":"credentials/openai-prod"},"update_mask":"kind"}' invalid_argument || die "a bad field mask was accepted"
ok "malformed name, page token and field mask: INVALID_ARGUMENT"

out=$(call ListAuditEvents "$ACME" '{"action":"AccessCredential"}')
codes=$(echo "$out" | python3 -c 'import json,sys; print(" ".join(e["principal"]+":"+e["resultCode"] for e in json.load(sys.stdin)["events"]))')
[ "$codes" = "alice:OK carol:PERMISSION_DENIED" ] || die "the audit log does not show every access: $codes"
[ "$(call VerifyAuditChain "$ACME" '{}' | field '["intact"]')" = True ] || die "a fresh audit chain does not verify"
ok "every access is in the audit log; the chain verifies"

# The same service over REST/JSON through the API gateway on the HTTP port, with plain curl.
REST="http://127.0.0.1:$HTTP_PORT/v1"
out=$(curl -sS -H "authorization: Bearer $ACME" "$REST/credentials/openai-prod:access")
[ "$(echo "$out" | field '["payload"]["data"]')" = "$SECRET_B64" ] || die "REST access returned: $out"
status=$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $GLOBEX" "$REST/credentials/openai-prod")
[ "$status" = 404 ] || die "tenant globex got $status from acme's credential over REST"
key=$(curl -sS -H "authorization: Bearer $ACME" -d '{"apiKey":{"scopes":["credentials.read"]}}' "$REST/apiKeys" | field '["key"]')
out=$(curl -sS -H "x-api-key: $key" "$REST/credentials?fields=credentials.name")
[ "$out" = '{"credentials":[{"name":"credentials/openai-prod"}]}' ] || die "an API key could not list over REST: $out"
ok "over REST with curl: access, tenant isolation, an API key with ?fields="

stop
python3 - "$SWITCHYARD_DATA_DIR/credentials.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("UPDATE audit_events SET principal = 'mallory' WHERE tenant = 'acme' AND sequence = 3")
db.commit()
PY
start
out=$(call VerifyAuditChain "$ACME" '{}')
[ "$(echo "$out" | field '["firstInvalidSequence"]')" = 3 ] || die "altering audit event 3 was not detected: $out"
ok "altering one audit row: VerifyAuditChain names event 3 ($(echo "$out" | field '["problem"]'))"

# The AI service's echo model through the official OpenAI Python SDK, pointed at Switchyard.
SDK_VENV="${SWITCHYARD_TOOLS:-$HOME/.cache/switchyard/tools}/openai-sdk"
if [ ! -x "$SDK_VENV/bin/python" ] || ! "$SDK_VENV/bin/python" -c 'import openai' 2>/dev/null; then
  python3 -m venv "$SDK_VENV" && "$SDK_VENV/bin/pip" install -q 'openai>=1.40' >/dev/null
fi
"$SDK_VENV/bin/python" - "http://127.0.0.1:$HTTP_PORT/v1" "$ACME" <<'PY' || die "the OpenAI SDK could not use the echo model"
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key=sys.argv[2])
reply = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hello from the sdk"}])
assert reply.choices[0].message.content == "hello from the sdk", reply
assert reply.usage.total_tokens > 0, reply
chunks = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "streamed by the sdk"}], stream=True)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == "streamed by the sdk", text
assert any(m.id == "echo" for m in client.models.list().data)
# The SDK asks for base64 vectors unless told otherwise; both must give the same numbers.
packed = client.embeddings.create(model="echo-embedding", input=["the cat sat", "a dog ran"])
plain = client.embeddings.create(model="echo-embedding", input=["the cat sat", "a dog ran"], encoding_format="float")
assert [d.index for d in packed.data] == [0, 1], packed
assert len(packed.data[0].embedding) == 256, len(packed.data[0].embedding)
assert packed.data[0].embedding == plain.data[0].embedding
assert packed.usage.prompt_tokens > 0, packed.usage
PY
ok "the echo models answer the official OpenAI Python SDK: chat unary and streamed, embeddings"

out=$(call AccessCredential "$ACME" '{"name":"credentials/openai-prod/versions/1"}')
[ "$(echo "$out" | field '["payload"]["data"]')" = "$SECRET_B64" ] || die "a restart lost data: $out"
ok "after a restart the credential and its versions are there"
stop

grep -qF "$SECRET" "$WORK/stdout" "$WORK/stderr" && die "the secret appears in the logs"
grep -rqaF "$SECRET" "$SWITCHYARD_DATA_DIR" && die "the secret is stored in plaintext under the data directory"
grep -rqaF "$SECRET_B64" "$SWITCHYARD_DATA_DIR" && die "the secret is stored base64-encoded under the data directory"
ok "the secret is in no log line and nowhere in plaintext on disk"
echo "    smoke test passed"
