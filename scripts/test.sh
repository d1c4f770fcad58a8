#!/usr/bin/env bash
# Install what the tests need, then lint and run every test. The README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test tools (tests/requirements.txt)"
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
for tool in python3 hadolint; do
  command -v "$tool" >/dev/null || { echo "missing $tool after install" >&2; exit 1; }
done
python3 -c "import stripe" || { echo "the stripe package did not install" >&2; exit 1; }

echo "== hadolint Dockerfile"
hadolint Dockerfile

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --locked
