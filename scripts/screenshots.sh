#!/usr/bin/env bash
# Takes the dashboard screenshots in docs/ (jobs.png, job.png, deliveries.png, sinks.png,
# signin.png): runs the browser test that seeds a few jobs with transitions and a dead delivery,
# then saves one PNG per page. Needs chromedriver and chromium (CHROMEDRIVER and CHROMIUM name
# other binaries); fails rather than skipping when they are missing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
mkdir -p "$repo/docs"
TUNEHOOK_SCREENSHOTS="$repo/docs" TUNEHOOK_TEST_BROWSER=required \
  cargo test --locked --test browser screenshots::of_every_page -- --exact --nocapture
