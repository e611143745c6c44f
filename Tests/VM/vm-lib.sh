# shellcheck shell=bash
# Sourced by the VM harness scripts (vm-run.sh, run-tests.sh, demo.sh, bench.sh).
#
# Prepares what a test VM boots: Debian's 6.12 kernel (downloaded with apt into
# .vm-cache/, which git ignores), and an initramfs made of busybox-static, the
# kernel modules listed in initramfs/modules.list (plus their dependencies) and
# initramfs/init. Everything is cached and rebuilt only when an input changes
# (kernel package, files under initramfs/, busybox).
#
# Settings (environment):
#   VM_CACHE         cache folder (default: <project>/.vm-cache; must be inside
#                    the project folder, which the VM sees)
#   VM_KERNEL_PKG    kernel package to use instead of the newest
#                    linux-image-6.12.*+deb12-amd64-unsigned apt knows

VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
VM_PROJECT=$(cd "$VM_DIR/../.." && pwd -P)
VM_CACHE=${VM_CACHE:-$VM_PROJECT/.vm-cache}

vm_msg() { printf 'vm: %s\n' "$*" >&2; }
vm_die() {
    printf 'vm: ERROR: %s\n' "$*" >&2
    exit 125
}

# Prints the newest Debian 6.12 kernel package apt knows (or VM_KERNEL_PKG).
vm_kernel_pkg() {
    if [ -n "${VM_KERNEL_PKG:-}" ]; then
        echo "$VM_KERNEL_PKG"
        return
    fi
    local pattern='^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' list
    list=$(apt-cache search --names-only "$pattern" 2>/dev/null | awk '{print $1}')
    if [ -z "$list" ] && [ "$(id -u)" -eq 0 ]; then
        vm_msg "apt knows no 6.12 kernel package yet: running apt-get update"
        apt-get update -qq >/dev/null 2>&1 || true
        list=$(apt-cache search --names-only "$pattern" 2>/dev/null | awk '{print $1}')
    fi
    if [ -z "$list" ]; then
        # Offline or no apt lists: fall back to a kernel already in the cache.
        list=$(find "$VM_CACHE/debs" -name 'linux-image-6.12.*+deb12-amd64-unsigned_*.deb' 2>/dev/null |
            sed 's|.*/||; s|_.*||')
    fi
    [ -n "$list" ] || return 1
    printf '%s\n' "$list" | sort -V | tail -n 1
}

# Downloads the kernel package into $VM_CACHE/debs (if not there) and prints its path.
vm_fetch_kernel_deb() {
    local pkg=$1 deb
    mkdir -p "$VM_CACHE/debs"
    deb=$(find "$VM_CACHE/debs" -name "${pkg}_*.deb" | sort -V | tail -n 1)
    if [ -z "$deb" ]; then
        vm_msg "downloading $pkg"
        local aptopt=()
        # apt's download sandbox user cannot write into a root-owned folder.
        [ "$(id -u)" -eq 0 ] && aptopt=(-o APT::Sandbox::User=root)
        (cd "$VM_CACHE/debs" && apt-get download -qq "${aptopt[@]}" "$pkg" >&2) ||
            vm_die "apt-get download $pkg failed"
        deb=$(find "$VM_CACHE/debs" -name "${pkg}_*.deb" | sort -V | tail -n 1)
        [ -n "$deb" ] || vm_die "apt-get download $pkg left no .deb in $VM_CACHE/debs"
    fi
    echo "$deb"
}

# Writes the initramfs tree for kernel modules tree $1 into $2.
_vm_stage_initramfs() {
    local moddir=$1 root=$2
    local -A path_of=() seen=()
    local f n boot=() extra=()
    mkdir -p "$root/modules" "$root/vmbin"
    cp /bin/busybox "$root/busybox"
    install -m 755 "$VM_DIR/initramfs/init" "$root/init"
    install -m 755 "$VM_DIR/initramfs/modload" "$root/vmbin/modload"
    if [ "$(id -u)" -eq 0 ]; then
        mkdir -p "$root/dev"
        mknod -m 600 "$root/dev/console" c 5 1
    fi

    while IFS= read -r f; do
        n=${f##*/}
        n=${n%.ko*}
        path_of[${n//-/_}]=$f
    done < <(find "$moddir/kernel" -name '*.ko*')

    local kind name
    while read -r kind name _; do
        case "$kind" in
            boot) boot+=("$name") ;;
            extra) extra+=("$name") ;;
            '' | '#'*) ;;
            *) vm_die "modules.list: bad line: $kind $name" ;;
        esac
    done <"$VM_DIR/initramfs/modules.list"

    : >"$root/modules/deps"
    _vm_add_module() {
        local name=$1 src ko deps d
        [ -n "${seen[$name]:-}" ] && return 0
        seen[$name]=1
        src=${path_of[$name]:-}
        if [ -z "$src" ]; then
            if grep -q "/${name//_/[-_]}\.ko\$" "$moddir/modules.builtin" 2>/dev/null; then
                return 0 # built into this kernel
            fi
            vm_die "kernel module $name is neither in the package nor built in"
        fi
        ko="$root/modules/$name.ko"
        case "$src" in
            *.xz) xz -dc "$src" >"$ko" ;;
            *.zst) zstd -qdc "$src" >"$ko" ;;
            *) cp "$src" "$ko" ;;
        esac
        deps=$(tr '\0' '\n' <"$ko" | sed -n 's/^depends=//p' | head -n 1 | tr ',-' ' _')
        echo "$name: $deps" >>"$root/modules/deps"
        for d in $deps; do
            _vm_add_module "$d"
        done
    }
    for n in "${boot[@]}" "${extra[@]}"; do
        _vm_add_module "$n"
    done
    : >"$root/modules/boot"
    for n in "${boot[@]}"; do
        [ -f "$root/modules/$n.ko" ] && echo "$n" >>"$root/modules/boot"
    done
    return 0
}

# Makes sure the kernel and initramfs are built; sets VM_KVER, VM_KERNEL, VM_INITRD.
vm_prepare() {
    local pkg deb key out
    pkg=$(vm_kernel_pkg) || vm_die "no linux-image-6.12.*+deb12-amd64-unsigned package known to apt (and none cached)"
    VM_KVER=${pkg#linux-image-}
    VM_KVER=${VM_KVER%-unsigned}
    out="$VM_CACHE/kernel-$VM_KVER"
    VM_KERNEL="$out/vmlinuz"
    VM_INITRD="$out/initramfs.cpio.gz"
    key=$(
        {
            echo "$pkg"
            sha256sum /bin/busybox
            cat "$VM_DIR/initramfs/"*
            declare -f _vm_stage_initramfs
        } | sha256sum | cut -c1-16
    )
    if [ -f "$VM_KERNEL" ] && [ -f "$VM_INITRD" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$key" ]; then
        return 0
    fi

    [ -x /bin/busybox ] || vm_die "/bin/busybox missing (Debian package busybox-static; run 'make setup')"
    deb=$(vm_fetch_kernel_deb "$pkg")
    vm_msg "building VM kernel + initramfs for $VM_KVER"
    local tmp
    mkdir -p "$VM_CACHE"
    tmp=$(mktemp -d "$VM_CACHE/build.XXXXXX")
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './boot/vmlinuz-*' './*lib/modules/*' ||
        vm_die "could not unpack $deb"
    local moddir
    moddir=$(find "$tmp" -mindepth 3 -maxdepth 4 -type d -path '*/lib/modules/*' -name '[0-9]*' | head -n 1)
    [ -d "$moddir/kernel" ] || vm_die "no modules in $deb"
    mkdir -p "$tmp/root"
    _vm_stage_initramfs "$moddir" "$tmp/root"
    mkdir -p "$out"
    cp "$tmp"/boot/vmlinuz-* "$out/vmlinuz.new"
    (cd "$tmp/root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -6) >"$out/initramfs.new" ||
        vm_die "could not build the initramfs"
    mv "$out/vmlinuz.new" "$VM_KERNEL"
    mv "$out/initramfs.new" "$VM_INITRD"
    echo "$key" >"$out/stamp"
    rm -rf "$tmp"
    # Keep only the kernel in use.
    local old
    for old in "$VM_CACHE"/kernel-*; do
        [ "$old" = "$out" ] || rm -rf "$old"
    done
    find "$VM_CACHE/debs" -name 'linux-image-*.deb' ! -path "$deb" -delete
    vm_msg "VM kernel ready: $VM_KERNEL ($(du -h "$VM_INITRD" | cut -f1) initramfs)"
}

# Compiles the helper programs in Tests/VM/tools/*.c into $VM_CACHE/tools
# (only when the source is newer). Sets VM_TOOLS.
vm_build_tools() {
    VM_TOOLS="$VM_CACHE/tools"
    mkdir -p "$VM_TOOLS"
    local src bin
    for src in "$VM_DIR"/tools/*.c; do
        [ -e "$src" ] || continue
        bin="$VM_TOOLS/$(basename "$src" .c)"
        if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ]; then
            # shellcheck disable=SC2046
            cc -O2 -Wall -o "$bin" "$src" $(pkg-config --cflags --libs libpmem) ||
                vm_die "could not compile $src"
        fi
    done
}

# vm_size VAR SIZE [UNIT]: sets VAR to SIZE (4096, 512K, 256M, 2G, 1T) in
# bytes, or in MiB with UNIT=M; exits with a message when SIZE is not valid or,
# for MiB, not a whole number of them. (Sets a variable rather than printing,
# so that the exit happens in the calling shell.)
vm_size() {
    local var=$1 s=$2 n unit bytes
    n=${s%[KkMmGgTt]}
    unit=${s#"$n"}
    [[ $n =~ ^[0-9]+$ ]] || vm_die "bad size: $s"
    case "$unit" in
        '') bytes=$n ;;
        K | k) bytes=$((n << 10)) ;;
        M | m) bytes=$((n << 20)) ;;
        G | g) bytes=$((n << 30)) ;;
        T | t) bytes=$((n << 40)) ;;
    esac
    if [ "${3:-}" = M ]; then
        ((bytes % 1048576 == 0)) || vm_die "size $s is not a whole number of MiB"
        bytes=$((bytes >> 20))
    fi
    printf -v "$var" '%s' "$bytes"
}
