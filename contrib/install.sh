#!/bin/sh
# Install ckms's kernel hooks and systemd files, as a distribution package
# ships them:
#
#   /etc/kernel/postinst.d/ckms          Debian: a kernel image was installed
#   /etc/kernel/header_postinst.d/ckms   Debian: kernel headers were installed
#   /etc/kernel/prerm.d/ckms             Debian: a kernel image is being removed
#   UNITDIR/ckms-autoinstall.service     systemd: autoinstall at boot
#   KERNEL_INSTALL_DIR/50-ckms.install   kernel-install(8) plugin
#
# Usage: [DESTDIR=/staging] [UNITDIR=...] [KERNEL_INSTALL_DIR=...] sh contrib/install.sh
# UNITDIR defaults to /usr/lib/systemd/system, KERNEL_INSTALL_DIR to
# /usr/lib/kernel/install.d.  The service is installed, not enabled: enable it
# with `systemctl enable ckms-autoinstall.service` (or a preset).  The hooks
# call `ckms` from PATH, the service from systemd's executable search path.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dest=${DESTDIR:-}
unitdir=${UNITDIR:-/usr/lib/systemd/system}
installdir=${KERNEL_INSTALL_DIR:-/usr/lib/kernel/install.d}

for hook in postinst.d header_postinst.d prerm.d; do
    install -D -m 0755 "$here/debian/$hook/ckms" "$dest/etc/kernel/$hook/ckms"
done
install -D -m 0755 "$here/systemd/50-ckms.install" "$dest$installdir/50-ckms.install"
install -D -m 0644 "$here/systemd/ckms-autoinstall.service" \
    "$dest$unitdir/ckms-autoinstall.service"
