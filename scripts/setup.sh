#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian 12 machine (run as root): Debian packages, the venv with
# pinned Python dependencies, and kernel headers for bcc. Quick when everything is already there.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="$repo/.venv"

debs=(python3-bpfcc bpfcc-tools linux-headers-amd64 swtpm swtpm-tools tpm2-tools qemu-system-x86
      linux-image-amd64 busybox-static cpio python3-gpg python3-venv python3-dev prometheus iproute2
      systemd kmod)

missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# bcc compiles against /lib/modules/$(uname -r)/build. Use the running kernel's own headers package
# when Debian has one; otherwise link the nearest distribution headers and say what that means.
kver="$(uname -r)"
if [ ! -e "/lib/modules/$kver/build/Makefile" ]; then
    if apt-get install -y -q --no-install-recommends "linux-headers-$kver" >/dev/null 2>&1; then
        echo "setup: installed linux-headers-$kver"
    else
        hdr="$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -n 1)"
        common="${hdr%-amd64}-common"
        mkdir -p "/lib/modules/$kver"
        ln -sfn "$hdr" "/lib/modules/$kver/build"
        ln -sfn "$common" "/lib/modules/$kver/source"
        echo "setup: WARNING: no headers packaged for kernel $kver; linked $hdr instead." >&2
        echo "setup: WARNING: with mismatched headers only tracepoint arguments and BTF-typed access are safe." >&2
    fi
fi

stamp="$venv/.requirements.sha256"
want="$(cat "$repo/requirements.txt" "$repo/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$repo/requirements.txt"
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -e "$repo"
    echo "$want" > "$stamp"
fi
getent group hostwarden >/dev/null || groupadd --system hostwarden
echo "setup: ready ($venv)"
