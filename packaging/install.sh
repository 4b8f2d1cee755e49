#!/bin/sh
# Installs modelgate from this unpacked tarball on hosts without dpkg: the
# same files, group, CA and systemd unit as the .deb (both are built by
# `cargo xtask package` from packaging/layout.rs).
#
#   sudo ./install.sh                      install or upgrade, enable and start
#   ./install.sh --dry-run                 print what it would do, change nothing
#   sudo ./install.sh --uninstall          stop, remove the pins and the files;
#                                          /etc/modelgate and /var/lib/modelgate stay
#   sudo ./install.sh --uninstall --purge  also remove those, the CA's trust-store
#                                          copy and the group
set -eu

UNIT=modelgate.service
here=$(cd "$(dirname "$0")" && pwd)

# kind (bin, file or conf), mode, path under root/ and on the host.
# Written by `cargo xtask package` from packaging/layout.rs.
FILES='
@FILES@'

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "install.sh: $*" >&2; exit 1; }

dry=0
action=install
purge=0
for arg in "$@"; do
	case $arg in
	--dry-run) dry=1 ;;
	--uninstall) action=uninstall ;;
	--purge) purge=1 ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown option $arg (see --help)" ;;
	esac
done
[ $purge = 0 ] || [ $action = uninstall ] || die "--purge goes with --uninstall"
[ $dry = 1 ] || [ "$(id -u)" = 0 ] || die "run as root (sudo $0 $*), or look first with --dry-run"

# Runs a command, or only prints it under --dry-run.
run() {
	if [ $dry = 1 ]; then echo "+ $*"; else "$@"; fi
}
systemd_running() { [ -d /run/systemd/system ]; }

install_files() {
	echo "$FILES" | while read -r kind mode path; do
		[ -n "$kind" ] || continue
		src=$here/root$path
		[ -f "$src" ] || die "$src is missing: unpack the whole tarball"
		run install -d -m 0755 "$(dirname "$path")"
		if [ "$kind" = conf ] && [ -e "$path" ] && ! cmp -s "$src" "$path"; then
			# Configuration you edited is yours: ours goes beside it.
			run install -m "$mode" "$src" "$path.new"
			echo "kept your $path; the packaged version is $path.new"
		else
			# install(1) replaces the file, so a running binary is not disturbed.
			run install -m "$mode" "$src" "$path"
		fi
	done
}

do_install() {
	install_files
	if ! getent group modelgate >/dev/null; then
		run groupadd --system modelgate
	fi
	run install -d -m 0700 /var/lib/modelgate
	if [ $dry = 1 ]; then
		echo "+ /usr/bin/modelgate ca export >/dev/null"
	else
		/usr/bin/modelgate ca export >/dev/null
	fi
	if ! command -v systemctl >/dev/null 2>&1; then
		echo "install.sh: no systemd here: start the agent with /usr/bin/modelgate run"
		return
	fi
	run systemctl enable "$UNIT"
	if systemd_running; then
		run systemctl daemon-reload
		# restart: starts it, or replaces a running agent, which adopts the
		# pinned programs (they keep enforcing in between).
		run systemctl restart "$UNIT"
		[ $dry = 1 ] || echo "modelgate is running: modelgate status"
	else
		echo "install.sh: systemd is not running (no /run/systemd/system): $UNIT is" \
			"enabled and starts at the next boot under systemd"
	fi
}

do_uninstall() {
	if command -v systemctl >/dev/null 2>&1; then
		if systemd_running; then
			run systemctl disable --now "$UNIT" || true
		else
			run systemctl disable "$UNIT" || true
		fi
	fi
	if [ -x /usr/bin/modelgate ]; then
		run /usr/bin/modelgate uninstall-bpf ||
			echo "install.sh: removing the pinned programs failed; rm -r /sys/fs/bpf/modelgate" >&2
	fi
	echo "$FILES" | while read -r kind mode path; do
		[ -n "$kind" ] || continue
		if [ "$kind" != conf ] || [ $purge = 1 ]; then
			run rm -f "$path"
		fi
	done
	run rm -rf /usr/share/doc/modelgate /usr/share/modelgate
	if systemd_running; then
		run systemctl daemon-reload
	fi
	if [ $purge = 1 ]; then
		run rm -rf /etc/modelgate /var/lib/modelgate /run/modelgate
		if [ -e /usr/local/share/ca-certificates/modelgate.crt ]; then
			run rm -f /usr/local/share/ca-certificates/modelgate.crt
			if command -v update-ca-certificates >/dev/null 2>&1; then
				run update-ca-certificates
			fi
		fi
		if getent group modelgate >/dev/null; then
			run groupdel modelgate
		fi
	else
		echo "install.sh: kept /etc/modelgate and /var/lib/modelgate (--purge removes them)"
	fi
}

case $action in
install) do_install ;;
uninstall) do_uninstall ;;
esac
