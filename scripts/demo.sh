#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the main job end to end on real images:
# archive -> publish (KOS + RAD-68) -> register (ITI-42) -> find (ITI-18) -> retrieve (ITI-43, RAD-69).
# With no argument the studies are the CT and MR test images inside the pydicom package.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
