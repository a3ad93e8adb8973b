#!/bin/bash
# build-guest.sh ARCH OUTDIR — build a tiny Linux test guest for QEMU.
#
# Writes OUTDIR/kernel, OUTDIR/initrd.gz, OUTDIR/disk.qcow2 (empty, 64M) and OUTDIR/info
# from Debian bookworm's packaged kernel and busybox-static for ARCH.
#
# The guest's /init mounts proc/sys/dev, loads the power-button modules, starts busybox
# acpid (so QMP system_powerdown powers it off), prints one line
#     BRAMBLE-GUEST-UP arch=<uname -m>
# and then idles forever. Kernel command-line switches understood by /init:
#     bramble.acpid=off   do not start acpid (the guest ignores ACPI powerdown)
#     bramble.net=dhcp    run `udhcpc -i eth0`, print BRAMBLE-GUEST-NET ip=... router=...
#                         (or BRAMBLE-GUEST-NET failed), then ping the router 3 times and print
#                         BRAMBLE-GUEST-PING ok|failed router=...; both before BRAMBLE-GUEST-UP
#     bramble.cloudinit=on  mount the CD-ROM labelled cidata and print BRAMBLE-GUEST-CIDATA ok|missing
#                         and each user-data line as BRAMBLE-GUEST-USERDATA <line>; with bramble.net=dhcp
#                         also fetch from 169.254.169.254 and print BRAMBLE-GUEST-META instance-id=...
#                         and BRAMBLE-GUEST-META openssh-key=... (none when not answered)
#     bramble.volume=write:WORD  in the background, wait (up to 10 min) for a disk vdb to appear
#                         (hot-plugged), write WORD into its first sector, print BRAMBLE-GUEST-VOLUME wrote WORD
#     bramble.volume=read   same wait, then print BRAMBLE-GUEST-VOLUME read <first word on vdb>
#     bramble.listen=PORT  (after the network) serve TCP PORT with busybox nc: every connection
#                         gets the line BRAMBLE-NC-HELLO
#     bramble.probe=IP:PORT  (after the network) every ~2 s try a TCP connection (2 s connect timeout)
#                         and print BRAMBLE-GUEST-PROBE <n> ok|fail (ok: the BRAMBLE-NC-HELLO line came)
#
# Packages are fetched with `apt-get download` under a PRIVATE apt configuration
# (its own sources.list, lists and cache under $BRAMBLE_GUEST_CACHE), so the host's
# dpkg database and architecture list are never touched.
#
# env: BRAMBLE_GUEST_CACHE  cache dir (default /var/cache/bramble/guests)
#      BRAMBLE_GUEST_MIRROR Debian mirror (default: the host's apt sources, else deb.debian.org)
#      BRAMBLE_GUEST_REFRESH=1  force `apt-get update` of the private lists
set -euo pipefail

die() { echo "build-guest: error: $*" >&2; exit 1; }
say() { echo "build-guest: $*"; }

[ $# -eq 2 ] || { echo "usage: $0 ARCH OUTDIR   (ARCH: x86_64|amd64, aarch64|arm64, armv7|armhf, ppc64le|ppc64el, s390x, mips64el, mips|mipsel)" >&2; exit 2; }
ARCH_IN=$1
OUT=$2

# ARCH -> debian arch, kernel metapackage
case $ARCH_IN in
  x86_64 | amd64) DARCH=amd64; META=linux-image-cloud-amd64 ;;
  aarch64 | arm64) DARCH=arm64; META=linux-image-cloud-arm64 ;;
  armv7 | armhf | armv7l | arm) DARCH=armhf; META=linux-image-armmp-lpae ;;
  ppc64le | ppc64el) DARCH=ppc64el; META=linux-image-powerpc64le ;;
  s390x) DARCH=s390x; META=linux-image-s390x ;;
  mips64el | mips64) DARCH=mips64el; META=linux-image-5kc-malta ;;
  mips | mipsel) DARCH=mipsel; META=linux-image-4kc-malta ;;
  *) die "unsupported architecture '$ARCH_IN' (supported: x86_64, aarch64, armv7, ppc64le, s390x, mips64el, mips)" ;;
esac
# modules /init loads when present (built-in or missing ones are skipped)
WANT_MODS="button evdev gpio_keys virtio_pci virtio_blk virtio_scsi sd_mod sr_mod virtio_net ata_piix isofs nls_utf8"

for tool in apt-get apt-cache dpkg-deb cpio gzip qemu-img flock sha256sum; do
  command -v $tool >/dev/null || die "'$tool' is not installed"
done
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r $KEYRING ] || die "$KEYRING missing (apt-get install debian-archive-keyring)"

CACHE=${BRAMBLE_GUEST_CACHE:-/var/cache/bramble/guests}
mkdir -p "$CACHE" "$OUT" || die "cannot create $CACHE or $OUT"
CACHE=$(cd "$CACHE" && pwd)
OUT=$(cd "$OUT" && pwd)

# One build at a time per cache: apt's lists and the .deb cache are shared.
exec 9>"$CACHE/.lock"
flock 9

SELF_HASH=$(sha256sum "$0" | cut -c1-16)

# ---------------------------------------------------------------- fast path
# Nothing to do when the outputs exist, were made by this script version and are newer
# than the .debs they came from.
if [ -f "$OUT/info" ] && [ -f "$OUT/kernel" ] && [ -f "$OUT/initrd.gz" ] && [ -f "$OUT/disk.qcow2" ] &&
  [ "$(sed -n 's/^script=//p' "$OUT/info")" = "$SELF_HASH" ]; then
  up_to_date=1
  for deb in $(sed -n 's/^debs=//p' "$OUT/info"); do
    { [ -f "$deb" ] && [ "$OUT/initrd.gz" -nt "$deb" ]; } || up_to_date=0
  done
  if [ $up_to_date = 1 ]; then
    say "$ARCH_IN: up to date in $OUT"
    exit 0
  fi
fi

# ---------------------------------------------------------------- private apt
host_mirror() {
  # the first plain http(s) Debian archive URI of the host's apt sources (not security)
  local f
  {
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -r "$f" ] && awk 'BEGIN{IGNORECASE=1} /^URIs:/{for(i=2;i<=NF;i++) print $i}' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -r "$f" ] && sed -n 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p' "$f"
    done
  } 2>/dev/null | grep -E '^https?://' | grep -v -e security -e debian-ports | head -1
}
MIRROR=${BRAMBLE_GUEST_MIRROR:-$(host_mirror || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
MIRROR=${MIRROR%/}

A=$CACHE/apt
DEBS=$CACHE/debs
mkdir -p "$A/etc/preferences.d" "$A/lists/partial" "$A/cache/archives/partial" "$A/state" "$DEBS"
[ -f "$A/state/status" ] || : >"$A/state/status"
# one sources line for every architecture built so far (apt warns about duplicate targets)
grep -qx "$DARCH" "$A/etc/archs" 2>/dev/null || {
  echo "$DARCH" >>"$A/etc/archs"
  rm -f "$A/lists/.fresh"
}
ARCHS=$( (dpkg --print-architecture; cat "$A/etc/archs") | sort -u)
SOURCES="deb [arch=$(sort -u "$A/etc/archs" | paste -sd, -) signed-by=$KEYRING] $MIRROR bookworm main"
[ "$(cat "$A/etc/sources.list" 2>/dev/null)" = "$SOURCES" ] || {
  echo "$SOURCES" >"$A/etc/sources.list"
  rm -f "$A/lists/.fresh"
}
{
  echo "Dir::Etc::SourceList \"$A/etc/sources.list\";"
  echo "Dir::Etc::SourceParts \"/nonexistent\";"
  echo "Dir::Etc::Preferences \"/nonexistent\";"
  echo "Dir::Etc::PreferencesParts \"$A/etc/preferences.d\";"
  echo "Dir::State::Lists \"$A/lists\";"
  echo "Dir::State::status \"$A/state/status\";"
  echo "Dir::Cache \"$A/cache\";"
  echo "APT::Architecture \"$(dpkg --print-architecture)\";"
  echo "APT::Architectures { $(for a in $ARCHS; do printf '"%s"; ' "$a"; done)};"
  echo "Acquire::Languages \"none\";"
  echo "APT::Sandbox::User \"root\";"
} >"$A/etc/apt.conf"
export APT_CONFIG=$A/etc/apt.conf
# the host's apt.conf.d may disable the binary cache (re-parsing all lists on every call);
# -o on the command line wins over apt.conf.d
APTO=(-o Dir::Cache::pkgcache=pkgcache.bin -o Dir::Cache::srcpkgcache=srcpkgcache.bin -q)

apt_update() {
  say "apt-get update (private lists in $A/lists, mirror $MIRROR)"
  # --error-on=any: a mirror that cannot be reached is an error, not a warning
  apt-get "${APTO[@]}" -qq --error-on=any update || die "apt-get update failed (mirror $MIRROR)"
  touch "$A/lists/.fresh"
}
if [ ! -f "$A/lists/.fresh" ] || [ "${BRAMBLE_GUEST_REFRESH:-0}" = 1 ]; then
  apt_update
fi

# metapackage -> versioned kernel package (linux-image-6.1.0-NN-cloud-amd64)
resolve_kernel() {
  apt-cache "${APTO[@]}" depends "$META:$DARCH" 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/{print $2; exit}' | sed 's/:.*//'
}
KPKG=$(resolve_kernel || true)
if [ -z "$KPKG" ]; then
  apt_update
  KPKG=$(resolve_kernel || true)
fi
[ -n "$KPKG" ] || die "cannot resolve $META for $DARCH from $MIRROR"

candidate() { apt-cache "${APTO[@]}" policy "$1" 2>/dev/null | awk '/Candidate:/{print $2; exit}' || true; }

# pkg:arch -> path of the cached .deb (downloads when missing)
fetch() {
  local pa=$1 pkg=${1%%:*} ver f
  ver=$(candidate "$pa")
  [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "no candidate for $pa"
  # apt-get download writes an epoch as %3a: match with and without it
  f=$(ls "$DEBS/${pkg}_"*"${ver#*:}_${DARCH}.deb" 2>/dev/null | head -1 || true)
  if [ -z "$f" ] || [ ! -s "$f" ]; then
    say "downloading $pa=$ver" >&2
    if ! (cd "$DEBS" && apt-get "${APTO[@]}" download "$pa=$ver" >&2); then
      # stale lists point at a version the mirror no longer has: refresh once and retry
      apt_update
      ver=$(candidate "$pa")
      (cd "$DEBS" && apt-get "${APTO[@]}" download "$pa=$ver" >&2) || die "cannot download $pa"
    fi
    f=$(ls "$DEBS/${pkg}_"*"${ver#*:}_${DARCH}.deb" 2>/dev/null | head -1 || true)
    [ -n "$f" ] && [ -s "$f" ] || die "downloaded $pa but cannot find the .deb in $DEBS"
  fi
  echo "$f"
}
KDEB=$(fetch "$KPKG:$DARCH")
BBDEB=$(fetch "busybox-static:$DARCH")
say "$ARCH_IN: kernel $(basename "$KDEB"), $(basename "$BBDEB")"

# ---------------------------------------------------------------- extract
EX=$CACHE/extract/$DARCH
if [ "$(cat "$EX/.stamp" 2>/dev/null)" != "$KDEB $BBDEB" ]; then
  say "extracting into $EX"
  rm -rf "$EX"
  mkdir -p "$EX"
  dpkg-deb -x "$KDEB" "$EX" || die "cannot extract $KDEB"
  dpkg-deb -x "$BBDEB" "$EX" || die "cannot extract $BBDEB"
  echo "$KDEB $BBDEB" >"$EX/.stamp"
fi
KIMG=$(ls "$EX"/boot/vmlinuz-* "$EX"/boot/vmlinux-* 2>/dev/null | head -1 || true)
[ -n "$KIMG" ] || die "no kernel image in $KDEB"
MODDIR=$(ls -d "$EX"/lib/modules/* "$EX"/usr/lib/modules/* 2>/dev/null | head -1 || true)
[ -n "$MODDIR" ] || die "no modules directory in $KDEB"
BB=$(ls "$EX"/bin/busybox "$EX"/usr/bin/busybox 2>/dev/null | head -1 || true)
[ -n "$BB" ] || die "no busybox in $BBDEB"

# ---------------------------------------------------------------- initramfs
say "$ARCH_IN: building initramfs"
TMP=$(mktemp -d "$CACHE/.build-$DARCH.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
ROOT=$TMP/root
mkdir -p "$ROOT"/{bin,sbin,proc,sys,dev,tmp,var/log,lib/modules,etc/acpi/PWRF}
cp "$BB" "$ROOT/bin/busybox"

cat >"$ROOT/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done </etc/modules.load
acpid=on
net=off
cloudinit=off
for w in $(cat /proc/cmdline); do
  case $w in
    bramble.acpid=*) acpid=${w#bramble.acpid=} ;;
    bramble.cloudinit=*) cloudinit=${w#bramble.cloudinit=} ;;
    bramble.net=*) net=${w#bramble.net=} ;;
    bramble.volume=*) volume=${w#bramble.volume=} ;;
    bramble.listen=*) listen=${w#bramble.listen=} ;;
    bramble.probe=*) probe=${w#bramble.probe=} ;;
  esac
done
if [ -n "${volume:-}" ]; then
  (
    i=0
    while [ ! -b /dev/vdb ] && [ $i -lt 6000 ]; do sleep 0.1; i=$((i + 1)); done
    case $volume in
      write:*)
        word=${volume#write:}
        printf '%s\n' "$word" | dd of=/dev/vdb bs=512 count=1 conv=sync,fsync 2>/dev/null && sync
        echo "BRAMBLE-GUEST-VOLUME wrote $word"
        ;;
      read)
        echo "BRAMBLE-GUEST-VOLUME read $(dd if=/dev/vdb bs=512 count=1 2>/dev/null | head -n 1 | tr -cd 'A-Za-z0-9_-')"
        ;;
    esac
  ) &
fi
# the kernel's orderly_poweroff (s390 quiesce, ctrl-alt-del) signals init
trap 'poweroff -f' INT TERM USR2 PWR
if [ "$acpid" = on ] && ls /dev/input/event* >/dev/null 2>&1; then
  acpid -f -c /etc/acpi &
  pid=$!
  # report "up" only once acpid holds the input devices, or a powerdown could be lost
  # (up to ~30 s: a busy TCG host can be that slow)
  i=0
  while [ $i -lt 600 ] && [ -d /proc/$pid ] && ! ls -l /proc/$pid/fd | grep -q /dev/input/event; do
    sleep 0.05
    i=$((i + 1))
  done
fi
echo "BRAMBLE-GUEST-DISKS $(ls /sys/block | grep -v -e '^loop' -e '^ram' | tr '\n' ' ')"
if [ "$cloudinit" = on ]; then
  seed=missing
  mkdir -p /mnt/cidata
  for dev in /dev/sr* /dev/vd* /dev/sd*; do
    [ -b "$dev" ] || continue
    # the ISO 9660 volume label (busybox-static has no blkid): 32 bytes at 0x8028
    [ "$(dd if="$dev" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' ')" = cidata ] || continue
    if mount -t iso9660 -o ro "$dev" /mnt/cidata; then seed=ok; break; fi
  done
  echo "BRAMBLE-GUEST-CIDATA $seed"
  if [ "$seed" = ok ]; then
    while IFS= read -r line || [ -n "$line" ]; do echo "BRAMBLE-GUEST-USERDATA $line"; done </mnt/cidata/user-data
  fi
fi
if [ "$net" = dhcp ]; then
  ip link set lo up
  ip link set eth0 up
  if udhcpc -i eth0 -f -q -n -t 10 -T 3 -s /etc/udhcpc.script && [ -s /tmp/net.env ]; then
    . /tmp/net.env
    echo "BRAMBLE-GUEST-NET ip=$ip router=$router"
    if ping -c 3 -W 3 "$router"; then result=ok; else result=failed; fi
    echo "BRAMBLE-GUEST-PING $result router=$router"
    if [ "$cloudinit" = on ]; then
      md=http://169.254.169.254/latest/meta-data
      # (busybox-static's wget crashes on -T: bound it with timeout instead)
      echo "BRAMBLE-GUEST-META instance-id=$(timeout 20 wget -q -O - $md/instance-id || echo none)"
      echo "BRAMBLE-GUEST-META openssh-key=$(timeout 20 wget -q -O - $md/public-keys/0/openssh-key || echo none)"
    fi
  else
    echo "BRAMBLE-GUEST-NET failed"
  fi
fi
if [ -n "${listen:-}" ]; then
  nc -ll -p "$listen" -e echo BRAMBLE-NC-HELLO &
fi
if [ -n "${probe:-}" ]; then
  (
    n=0
    while :; do
      n=$((n + 1))
      if timeout 5 nc -w 2 "${probe%:*}" "${probe##*:}" </dev/null 2>/dev/null | grep -q BRAMBLE-NC-HELLO; then
        echo "BRAMBLE-GUEST-PROBE $n ok"
      else
        echo "BRAMBLE-GUEST-PROBE $n fail"
      fi
      sleep 2
    done
  ) &
fi
echo "BRAMBLE-GUEST-UP arch=$(uname -m)"
while :; do
  sleep 3600 &
  wait $!
done
EOF
printf '#!/bin/busybox sh\n/bin/busybox poweroff -f\n' >"$ROOT/sbin/poweroff"
# udhcpc hands the lease to this script: configure eth0 and remember what it got for /init
cat >"$ROOT/etc/udhcpc.script" <<'SCRIPT'
#!/bin/busybox sh
case $1 in
  bound | renew)
    ifconfig "$interface" "$ip" netmask "$subnet" up
    router=${router%% *}
    [ -n "$router" ] && route add default gw "$router" dev "$interface"
    echo "ip=$ip router=$router" >/tmp/net.env
    ;;
  deconfig) ifconfig "$interface" 0.0.0.0 ;;
esac
exit 0
SCRIPT
chmod 755 "$ROOT/etc/udhcpc.script"
printf '#!/bin/busybox sh\n/bin/busybox poweroff -f\n' >"$ROOT/etc/acpi/PWRF/00000080"
chmod 755 "$ROOT/init" "$ROOT/sbin/poweroff" "$ROOT/etc/acpi/PWRF/00000080"

# modules: follow "depends=" from .modinfo, decompress, write the load order deps-first
: >"$ROOT/etc/modules.load"
declare -A IDX=() SEEN=()
while IFS= read -r f; do
  n=${f##*/}
  n=${n%%.ko*}
  IDX[${n//-/_}]=$f
done < <(find "$MODDIR/kernel" -name '*.ko*')
add_mod() {
  local n=${1//-/_} f deps d dst
  [ -n "${SEEN[$n]:-}" ] && return 0
  SEEN[$n]=1
  f=${IDX[$n]:-}
  [ -n "$f" ] || return 0
  dst=$ROOT/lib/modules/$n.ko
  case $f in
    *.xz) xz -dc "$f" >"$dst" ;;
    *.zst) zstd -qdc "$f" >"$dst" ;;
    *) cp "$f" "$dst" ;;
  esac
  deps=$(tr '\0' '\n' <"$dst" | sed -n 's/^depends=//p' | head -1)
  for d in ${deps//,/ }; do add_mod "$d"; done
  echo "$n.ko" >>"$ROOT/etc/modules.load"
}
for m in $WANT_MODS; do add_mod "$m"; done

(cd "$ROOT" && find . | sort | cpio -o -H newc --quiet -R 0:0 | gzip -6 >"$TMP/initrd.gz") ||
  die "cannot build the initramfs"
cp "$KIMG" "$TMP/kernel"
qemu-img create -q -f qcow2 "$TMP/disk.qcow2" 64M || die "qemu-img create failed"
rm -f "$OUT/info"
mv -f "$TMP/kernel" "$OUT/kernel"
mv -f "$TMP/disk.qcow2" "$OUT/disk.qcow2"
mv -f "$TMP/initrd.gz" "$OUT/initrd.gz"
{
  echo "arch=$ARCH_IN"
  echo "debian_arch=$DARCH"
  echo "kernel_pkg=$KPKG"
  echo "kernel_version=$(basename "$MODDIR")"
  echo "modules=$(sed 's/\.ko$//' "$ROOT/etc/modules.load" | paste -sd, -)"
  echo "mirror=$MIRROR"
  echo "debs=$KDEB $BBDEB"
  echo "script=$SELF_HASH"
} >"$OUT/info"
say "$ARCH_IN: done -> $OUT (kernel $(stat -c %s "$OUT/kernel") B, initrd $(stat -c %s "$OUT/initrd.gz") B)"
