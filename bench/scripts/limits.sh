# Sourced by run-all.sh and compare-builds.sh: the limits the 10,000-client
# cases need, raised for the run. Defines restore_maps, to call on exit.
#   raise_limits CONNS

# Every roomchat thread maps 4 memory areas; the server caps its clients at
# what vm.max_map_count allows (8 maps each), 7,935 at Linux's default, so for
# the 10,000-connection cases the limit is raised for this run and put back.
restore_maps() { :; }
raise_limits() {
    local conns=$1
    # 10,000 connections need 10,000+ descriptors in the server and in the bench.
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((conns + 240)) ]; then
        echo "bench: open-file limit $(ulimit -n) is below $((conns + 240)); conns will fail" >&2
    fi
    maps_before=$(cat /proc/sys/vm/max_map_count 2>/dev/null || echo 0)
    local maps_needed=$((20000 * 8 + 2048))
    if [ "$maps_before" -lt "$maps_needed" ]; then
        if [ -w /proc/sys/vm/max_map_count ] && echo "$maps_needed" >/proc/sys/vm/max_map_count 2>/dev/null; then
            echo "bench: vm.max_map_count $maps_before -> $maps_needed for this run" >&2
            restore_maps() { echo "$maps_before" >/proc/sys/vm/max_map_count; }
        else
            echo "bench: vm.max_map_count is $maps_before; roomchat will refuse clients past $(((maps_before - 2048) / 8))" >&2
        fi
    fi
}
