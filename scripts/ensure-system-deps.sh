#!/usr/bin/env bash
# Installs the Debian packages zcnet's tests and benchmark use (iproute2 for `ip netns`, veth, ifb;
# ethtool, the independent reading tests/test_doctor.py checks the doctor's offloads against),
# when they are missing and we are root. Never fails the build: without them tests skip with a reason.
set -u
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v make >/dev/null 2>&1 || need+=(make)
command -v ethtool >/dev/null 2>&1 || [ -x /usr/sbin/ethtool ] || [ -x /sbin/ethtool ] || need+=(ethtool)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "zcnet: missing ${need[*]} (not root or no apt-get): namespace tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null \
  || echo "zcnet: could not install ${need[*]}: namespace tests will be skipped" >&2
exit 0
