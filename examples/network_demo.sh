#!/usr/bin/env bash
# One-script network demo: certificates, tokens, per-client data files, a TLS server and three
# clients on loopback, each in its own process. Run from the repository root after `make install`
# (or `make run` once). Everything goes to demo-network/.
set -euo pipefail
FEDFM=${FEDFM:-$(pwd)/.venv/bin/fedfm}
PY=${PY:-$(pwd)/.venv/bin/python}
CONFIG=$(pwd)/configs/network.toml
mkdir -p demo-network && cd demo-network
"$FEDFM" certs certs --force > /dev/null  # a throw-away CA, new on every demo run
"$PY" -c "from fedfm.config import load_config; from fedfm.data.split import write_client_files; \
print(*write_client_files(load_config('$CONFIG'), 'clients').values())"
for c in c0 c1 c2; do echo "$c $("$PY" -c 'import secrets; print(secrets.token_hex(24))')"; done > tokens.txt
"$FEDFM" serve "$CONFIG" --quiet > serve.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for c in c0 c1 c2; do
  token=$(awk -v c="$c" '$1==c {print $2}' tokens.txt)
  "$FEDFM" join 127.0.0.1:8443 --ca certs/ca.pem --client-id "$c" --token="$token" --threads 1 \
    --data "clients/$c.tsv" > "join-$c.log" 2>&1 &
done
wait $server
tail -n 2 serve.log
echo "clients:"; tail -qn 1 join-*.log
