#!/usr/bin/env bash
# egressd's demo: egressd, an example function and a local origin, all on loopback.
# The function is scheduled and run once; it reads a secret through egressd, calls an
# allowed origin through HTTP_PROXY, and is refused a host off the allowlist.
# Usage: scripts/demo.sh   (every port is picked free; the output can go to a file)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# wait_for TRIES CMD...: run CMD every 0.1s until it succeeds, at most TRIES times.
wait_for() {
  local tries=$1; shift
  for _ in $(seq 1 "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "demo: gave up waiting for: $*" >&2
  return 1
}

echo "== building"
go build -o "$work/egressd" ./cmd/egressd
go build -o "$work/function" ./examples/function

echo "== provisioning a secret store"
"$work/egressd" secrets init --file "$work/secrets.enc" --key-file "$work/secrets.key"
printf 'demo-token-123' | "$work/egressd" secrets create api-token --file "$work/secrets.enc" --key-file "$work/secrets.key"
printf 'demo-admin-token\n' > "$work/admin.token"

# egressd resolves origin.demo.test from its own hosts file; its only DNS upstream is a
# dead loopback port, so no name is ever asked of another machine. Every listener is
# on port 0: egressd says in its log which ports it got, the origin and the function
# write theirs to a file, and the allowlist and the functions file are written once
# those are known (egressd reloads both).
printf '127.0.0.1 origin.demo.test\n127.0.0.1 localhost\n' > "$work/hosts"
mkdir -p "$work/allow.d"
: > "$work/allow.d/demo.txt"
printf 'functions: []\n' > "$work/functions.yaml"
cat > "$work/egressd.yaml" <<CFG
proxy:
  listen: 127.0.0.1:0
metrics:
  listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
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

echo "== starting egressd, the origin and the function"
"$work/egressd" serve --config "$work/egressd.yaml" 2>"$work/egressd.log" & pids+=($!)
wait_for 100 grep -q 'msg="egressd started"' "$work/egressd.log"
started=$(grep 'msg="egressd started"' "$work/egressd.log")
addr_of() { sed -E "s/.* $1=([0-9.:]+).*/\1/" <<<"$started"; }
proxy=$(addr_of proxy) metrics=$(addr_of metrics) admin_addr=$(addr_of admin)
# This egressd's own /readyz, not whatever else may listen somewhere.
wait_for 100 curl -fs "http://$metrics/readyz"

"$work/function" -origin -addr-file "$work/origin.addr" & pids+=($!)
wait_for 100 test -s "$work/origin.addr"
origin_port=$(cut -d: -f2 "$work/origin.addr")
HTTP_PROXY="http://$proxy" http_proxy="http://$proxy" NO_PROXY= no_proxy= \
  "$work/function" -addr-file "$work/function.addr" -allowed "http://origin.demo.test:$origin_port/" \
  > "$work/function.log" 2>&1 & pids+=($!)
wait_for 100 test -s "$work/function.addr"

cat > "$work/allow.d/demo.txt" <<RULES
origin.demo.test:$origin_port   # the demo origin
127.0.0.1/32                    # it lives on loopback: let the private-address guard through
RULES
cat > "$work/functions.yaml" <<FNS
functions:
  - name: demo
    url: http://$(cat "$work/function.addr")/
    state: productive
FNS
wait_for 50 grep -q 'msg="functions reloaded"' "$work/egressd.log"
wait_for 50 grep -q 'msg="policy loaded" rules=2' "$work/egressd.log"

export EGRESSD_ADMIN_TOKEN=demo-admin-token
admin=(--admin "http://$admin_addr")
echo "== scheduling the function every minute, and running it now"
created=$("$work/egressd" schedules create --function demo --cron '* * * * *' --payload '{"hello":"demo"}' "${admin[@]}")
echo "$created"
id=$(awk '{print $2}' <<<"$created" | tr -d :)
"$work/egressd" schedules run "$id" "${admin[@]}"

echo "== what the function saw"
cat "$work/function.log"
echo "== egressd denials"
"$work/egressd" denials "${admin[@]}"
echo "== egressd metrics"
curl -s "http://$metrics/metrics" | grep -E '^egressd_(requests_total|secrets_operations_total\{op="get"|schedule_invocations_total)' | grep -v ' 0$'
