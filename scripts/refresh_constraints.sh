#!/usr/bin/env bash
# Re-resolves the dependency pins in constraints.txt: installs jaxrec with every extra the test
# command uses into a fresh virtual environment WITHOUT the old pins, then freezes what pip chose.
#
#   bash scripts/refresh_constraints.sh            # writes constraints.txt
#   bash scripts/refresh_constraints.sh OUT.txt    # writes OUT.txt instead (to diff first)
#
# Run the README's test command afterwards; commit constraints.txt only if the suite passes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-constraints.txt}
python=${PYTHON:-python3}
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q ".[test,torch]" ./packaging/fbgemm-gpu-cpu-alias
{
  echo "# Dependency pins of the test suite (README: quickstart command 2; CI installs with them)."
  echo "# Regenerate with: bash scripts/refresh_constraints.sh   ($(date -u +%Y-%m-%d), $("$venv/bin/python" --version))"
  # jaxrec itself and the fbgemm-gpu alias are installed from this tree, not pinned; local
  # version labels (torch's +cpu) are dropped so that the pin holds for every build of a version.
  "$venv/bin/pip" freeze --exclude jaxrec --exclude fbgemm-gpu | sed -E 's/\+[A-Za-z0-9.]+$//'
} > "$out"
echo "wrote $out ($(grep -vc '^#' "$out") pins)"
