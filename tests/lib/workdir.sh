# Sourced by the shell integration tests: a work directory, its cleanup, and a JSON reader.
#   blksnap_workdir PREFIX   sets work=/tmp/PREFIX-XXXXXX, fuse=$work/fuse,
#                            BLKSNAP_CONTROL=$work/control.sock, daemon_pid=""; and traps
#                            blksnap_cleanup on EXIT.
#   blksnap_cleanup          unmounts everything below $work (deepest first), stops the daemon
#                            ($daemon_pid), detaches loop devices over files in $work, lazily
#                            unmounts the FUSE dir and removes $work.
blksnap_workdir() {
  work=$(mktemp -d "/tmp/$1-XXXXXX")
  fuse=$work/fuse
  export BLKSNAP_CONTROL=$work/control.sock
  daemon_pid=""
  trap blksnap_cleanup EXIT
}

blksnap_cleanup() {
  set +e
  awk -v w="$work" '$5 ~ "^"w"/" {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    [ "$m" = "$fuse" ] || umount "$m" 2>/dev/null || umount -l "$m"
  done
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -TERM "$daemon_pid"
    wait "$daemon_pid"
  fi
  for f in /sys/block/loop*/loop/backing_file; do
    [ -e "$f" ] || continue
    case "$(cat "$f")" in "$work"/*) d=${f#/sys/block/}; losetup -d "/dev/${d%%/*}" ;; esac
  done
  grep -q " $fuse " /proc/self/mountinfo && umount -l "$fuse"
  rm -rf "$work"
}

# json KEY.PATH: reads JSON on stdin and prints one field ("devices.0.image.loop"; null: "").
json() {
  /usr/bin/python3 -S -c 'import json,sys
v=json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v=v[int(k)] if isinstance(v,list) else v[k]
print("" if v is None else v)' "$1"
}
