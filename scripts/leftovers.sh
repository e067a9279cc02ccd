#!/usr/bin/env bash
# Fails when the test suite left a process behind: any program a gateway started (it carries
# HERMES_DASHBOARD_USER_ID), a gateway or its reaper built from this checkout, the test IdP, a
# test Redis, a test browser, a benchmark sshd or a test's network namespace. Waits up to 15 s
# for what is still being ended, then names what remains (and ends it, so one failed run does
# not poison the next).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

leftovers() {
  local d pid cmd cwd
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    [ "$pid" = "$$" ] || [ "$pid" = "$BASHPID" ] && continue
    cmd=$({ tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null) || continue
    [ -n "$cmd" ] || continue
    cwd=$(readlink "$d/cwd" 2>/dev/null || true)
    if { tr '\0' '\n' <"$d/environ"; } 2>/dev/null | grep -q '^HERMES_DASHBOARD_USER_ID=' ||
      [[ "$cmd" == "$repo/target/"*hermes-ssh-gateway* ]] ||
      [[ "$cwd" == "$repo/tests/idp" ]] ||
      [[ "$cmd" == redis-server* && "$cwd" == /tmp/* ]] ||
      [[ "$cmd" == *chromium*--headless* ]] ||
      [[ "$cmd" == "/usr/sbin/sshd -D -f /tmp/"* ]]; then
      echo "$pid $cmd"
    fi
  done
}

for _ in $(seq 1 30); do
  left=$(leftovers; ip netns list 2>/dev/null | awk '/^hgw-/ {print "netns " $1}')
  [ -z "$left" ] && exit 0
  sleep 0.5
done
echo "the test suite left these processes running:" >&2
echo "$left" >&2
echo "$left" | awk '$1 != "netns" {print $1}' | xargs -r kill -KILL 2>/dev/null
echo "$left" | awk '$1 == "netns" {print $2}' | xargs -r -n1 ip netns del 2>/dev/null
exit 1
