#!/bin/bash
# Install the Debian packages Bramble needs; skips apt entirely when all are present.
#   install-deps.sh runtime   what `make up` needs (local storage: no Ceph packages)
#   install-deps.sh ceph      what Ceph RBD storage needs on top: the Python bindings, the ceph CLI,
#                             QEMU's rbd block driver
#   install-deps.sh test      what `make test` needs (all of the above and the tests' tools)
# (gcc, libc6-dev and python3-dev build the TFTP server's C lock-step loop; without them pip skips
# it and the server uses its Python loop. busybox-static provides the `busybox` command the tests
# use; Debian's busybox conflicts with it.)
set -euo pipefail
runtime=(python3-venv gcc libc6-dev python3-dev qemu-system-x86 qemu-utils ovmf busybox-static cpio gzip xz-utils zstd curl ca-certificates
         debian-archive-keyring python3-nftables)
ceph=(qemu-block-extra python3-rbd python3-rados ceph-common)
test=(qemu-system-arm qemu-efi-aarch64 qemu-system-misc qemu-system-mips qemu-system-ppc procps tftp-hpa atftp postgresql-15 isc-dhcp-client iproute2
      ceph-mon ceph-osd ceph-mgr bsdutils nginx-light nftables dnsmasq-base python3-scapy ndisc6 kea-dhcp4-server kea-admin
      ipxe git)
case "${1:-runtime}" in
  runtime) want=("${runtime[@]}") ;;
  ceph) want=("${runtime[@]}" "${ceph[@]}") ;;
  test) want=("${runtime[@]}" "${ceph[@]}" "${test[@]}") ;;
  *) echo "usage: $0 runtime|ceph|test" >&2; exit 2 ;;
esac
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "bramble: need root to install: ${missing[*]}" >&2
  exit 1
fi
echo "+ apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Packages such as nginx-light, kea and dnsmasq would start their services on install; tests run
# their own instances in namespaces, so keep the services off (policy-rc.d, as Debian images do).
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && made_policy=1
fi
cleanup_policy() { [ "$made_policy" = 1 ] && rm -f "$policy"; return 0; }
trap cleanup_policy EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
