#!/usr/bin/env bash
# CI step: the full-disk test on a real file system. Mounts a 1 MiB tmpfs (needs root, or a user namespace
# through `unshare`, from util-linux), runs the ignored test `full_disk::on_a_real_full_file_system...` with the
# store on it, and unmounts.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --test it --no-run
mnt="$(mktemp -d)"
run() {
    mount -t tmpfs -o size=1m tmpfs "$mnt"
    USSDB_SMALL_FS="$mnt" cargo test --test it -- --ignored --exact \
        full_disk::on_a_real_full_file_system_the_reserve_lets_deletes_and_compaction_through --nocapture
    umount "$mnt"
}
if [ "$(id -u)" = 0 ]; then
    run
else
    command -v unshare >/dev/null || { echo "unshare is missing: apt-get install -y util-linux" >&2; exit 1; }
    export -f run
    export mnt
    unshare --user --map-root-user --mount bash -c run
fi
rmdir "$mnt"
