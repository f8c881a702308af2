#!/usr/bin/env bash
# egressd's demo: egressd, an example function and a local origin, all on loopback.
# The function is scheduled and run once; it reads a secret through egressd, calls an
# allowed origin through HTTP_PROXY, and is refused a host off the allowlist.
# Usage: scripts/demo.sh   (ports 13128, 19090, 19091, 18080, 18081 must be free)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

echo "== building"
go build -o "$work/egressd" ./cmd/egressd
go build -o "$work/function" ./examples/function

echo "== provisioning a secret store"
"$work/egressd" secrets init --file "$work/secrets.enc" --key-file "$work/secrets.key"
printf 'demo-token-123' | "$work/egressd" secrets create api-token --file "$work/secrets.enc" --key-file "$work/secrets.key"
printf 'demo-admin-token\n' > "$work/admin.token"

# egressd resolves origin.demo.test from its own hosts file; its only DNS upstream is a
# dead loopback port, so no name is ever asked of another machine.
printf '127.0.0.1 origin.demo.test\n127.0.0.1 localhost\n' > "$work/hosts"
mkdir -p "$work/allow.d"
cat > "$work/allow.d/demo.txt" <<'RULES'
origin.demo.test:18081   # the demo origin
127.0.0.1/32             # it lives on loopback: let the private-address guard through
RULES
cat > "$work/functions.yaml" <<'FNS'
functions:
  - name: demo
    url: http://127.0.0.1:18080/
    state: productive
FNS
cat > "$work/egressd.yaml" <<CFG
proxy:
  listen: 127.0.0.1:13128
metrics:
  listen: 127.0.0.1:19090
admin:
  listen: 127.0.0.1:19091
  token_file: admin.token
dns:
  upstreams: [127.0.0.1:1]
  hosts_file: hosts
allowlist: [allow.d]
secrets:
  file: secrets.enc
  key_file: secrets.key
scheduler:
  functions_file: functions.yaml
  state_file: schedules.json
log:
  format: text
CFG

echo "== starting the origin, egressd and the function"
"$work/function" -origin -listen 127.0.0.1:18081 & pids+=($!)
"$work/egressd" serve --config "$work/egressd.yaml" 2>"$work/egressd.log" & pids+=($!)
HTTP_PROXY=http://127.0.0.1:13128 http_proxy=http://127.0.0.1:13128 NO_PROXY= no_proxy= \
  "$work/function" -listen 127.0.0.1:18080 > "$work/function.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:19090/readyz >/dev/null 2>&1 && break
  sleep 0.1
done

export EGRESSD_ADMIN_TOKEN=demo-admin-token
admin=(--admin http://127.0.0.1:19091)
echo "== scheduling the function every minute, and running it now"
id=$("$work/egressd" schedules create --function demo --cron '* * * * *' --payload '{"hello":"demo"}' "${admin[@]}" | tee /dev/stderr | awk '{print $2}' | tr -d :)
"$work/egressd" schedules run "$id" "${admin[@]}"

echo "== what the function saw"
cat "$work/function.log"
echo "== egressd denials"
"$work/egressd" denials "${admin[@]}"
echo "== egressd metrics"
curl -s http://127.0.0.1:19090/metrics | grep -E '^egressd_(requests_total|secrets_operations_total\{op="get"|schedule_invocations_total)' | grep -v ' 0$'
