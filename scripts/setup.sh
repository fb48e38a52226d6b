#!/usr/bin/env bash
# Installs everything warden needs on a fresh Debian 12 machine (run as root) and builds it.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pair in clang:clang llc:llvm bpftool:bpftool tc:iproute2 nginx:nginx-light dnsmasq:dnsmasq-base \
            haproxy:haproxy curl:curl openssl:openssl wrk:wrk ping:iputils-ping h2load:nghttp2-client; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need_apt+=("$pkg")
done
[ -f /usr/include/bpf/bpf_helpers.h ] || need_apt+=(libbpf-dev)
# asm/types.h for the BPF build comes from the multiarch kernel headers
[ -e /usr/include/x86_64-linux-gnu/asm/types.h ] || [ -e /usr/include/asm/types.h ] || need_apt+=(linux-libc-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" ca-certificates >/dev/null
fi

# etcd for the cluster tests, the lab and the demo. The tests and the lab start their own etcd
# (own ports, own data dir); the package's init script would start a system-wide one at install
# time, so invoke-rc.d is told not to (policy-rc.d exit 101: "action forbidden"), and nothing
# is left running that the project did not start.
need_etcd=()
command -v etcd >/dev/null 2>&1 || need_etcd+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_etcd+=(etcd-client)
if [ ${#need_etcd[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_etcd[*]} (no service started)"
  export DEBIAN_FRONTEND=noninteractive
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  apt-get update -qq
  rc=0
  apt-get install -y -qq --no-install-recommends "${need_etcd[@]}" >/dev/null || rc=$?
  if [ $made_policy = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  if [ $rc != 0 ]; then exit $rc; fi
  update-rc.d -f etcd remove >/dev/null 2>&1 || true
fi

# bpffs: not mounted at boot on this kind of machine
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  mount -t bpf bpf /sys/fs/bpf
fi

# npm ci also runs `prepare` (tsc + clang for the tc program). Native addons (re2) build here.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
else
  npm run build --silent
fi
